-- What the PPO policy chose: size (USD), take-profit and stop-loss (% of entry) by sizing mode.
SELECT
    sizing,
    policy_version,
    count() AS trades,
    round(quantile(0.1)(rl_size_usd), 2) AS size_p10,
    round(median(rl_size_usd), 2) AS size_p50,
    round(quantile(0.9)(rl_size_usd), 2) AS size_p90,
    round(median(rl_tp_pct), 4) AS tp_pct_p50,
    round(median(rl_sl_pct), 4) AS sl_pct_p50,
    countIf(rl_stochastic) AS stochastic
FROM trades FINAL
GROUP BY sizing, policy_version
ORDER BY sizing, policy_version
