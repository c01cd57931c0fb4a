-- Closed trades in exit order, with what an evaluation of them needs (the side, the size the
-- policy chose, the policy version, and the last 5 bars' return at entry).
SELECT trade_id, symbol, side, entry_ts, exit_ts, net_pnl, size_usd, sizing, policy_version,
       features['ret_5'] AS entry_ret_5
FROM trades FINAL
WHERE status = 'closed'
ORDER BY exit_ts, trade_id
