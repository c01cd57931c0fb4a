SELECT trade_id, symbol, side, entry_ts, exit_ts, exit_reason, net_pnl, pnl_pct, sizing,
       policy_version, reward, joined_from
FROM trade_outcomes FINAL
ORDER BY trade_id
