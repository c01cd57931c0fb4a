-- What the PPO policy chose for every trade, in entry order: the policy version (N of
-- ppo-<lineage>-vN), the size (USD), take-profit and stop-loss (% of entry).
SELECT
    entry_ts,
    trade_id,
    symbol,
    sizing,
    policy_version,
    toUInt32OrZero(extract(policy_version, '-v(\\d+)$')) AS policy_number,
    round(rl_size_usd, 2) AS size_usd,
    round(rl_tp_pct, 4) AS tp_pct,
    round(rl_sl_pct, 4) AS sl_pct
FROM trades FINAL
ORDER BY entry_ts, trade_id
