-- Net PnL, win rate and per-trade Sharpe by exit day (UTC).
SELECT
    toDate(exit_ts) AS day,
    count() AS trades,
    round(countIf(net_pnl > 0) / count(), 4) AS win_rate,
    round(sum(net_pnl), 4) AS total_net_pnl,
    round(avg(pnl_pct) / nullIf(stddevSamp(pnl_pct), 0), 4) AS sharpe_per_trade
FROM trades FINAL
WHERE status = 'closed'
GROUP BY day
ORDER BY day
