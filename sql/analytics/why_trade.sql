-- "Why did we trade": one trade's full entry state.
SELECT trade_id, symbol, side, status, entry_ts, entry_price, tp_price, sl_price, size_usd,
       confidence, consensus, volatility, vote_models, vote_versions, vote_actions,
       vote_confidences, sup_mode, sup_buy_share, sup_sell_share, sup_window_size, sup_reason,
       rl_state, rl_action, rl_log_prob, rl_value, policy_version, sizing, feature_set,
       features, exit_ts, exit_price, exit_reason, net_pnl, pnl_pct
FROM trades FINAL
WHERE trade_id = {trade_id:String}
