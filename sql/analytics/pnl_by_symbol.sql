-- Net PnL, win rate and a per-trade Sharpe ratio (mean / std of trade returns in %) by symbol.
SELECT
    symbol,
    count() AS trades,
    round(countIf(net_pnl > 0) / count(), 4) AS win_rate,
    round(sum(net_pnl), 4) AS total_net_pnl,
    round(sum(fees), 4) AS total_fees,
    round(avg(pnl_pct), 5) AS mean_return_pct,
    round(avg(pnl_pct) / nullIf(stddevSamp(pnl_pct), 0), 4) AS sharpe_per_trade
FROM trades FINAL
WHERE status = 'closed'
GROUP BY symbol
ORDER BY symbol
