-- Every trade (the determinism and recovery checks compare these).
SELECT trade_id, symbol, side, status, quantity, entry_ts, entry_price, tp_price, sl_price,
       size_usd, policy_version, rl_action, rl_log_prob, exit_ts, exit_price, exit_reason,
       gross_pnl, fees, net_pnl
FROM trades FINAL
ORDER BY trade_id
