-- Largest peak-to-trough fall of realised equity: the portfolio starts at {start_equity} and
-- moves by each closed trade's net PnL in exit-time order; the peak includes the start, so a
-- first losing trade is a drawdown.
SELECT
    count() AS trades,
    round(max(peak), 4) AS peak_equity,
    round(min(equity), 4) AS low_equity,
    round(max((peak - equity) / peak), 6) AS max_drawdown
FROM
(
    SELECT
        equity,
        greatest({start_equity:Float64},
                 max(equity) OVER (ORDER BY exit_ts, trade_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS peak
    FROM
    (
        SELECT exit_ts, trade_id,
               {start_equity:Float64} + sum(net_pnl) OVER (ORDER BY exit_ts, trade_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS equity
        FROM trades FINAL
        WHERE status = 'closed'
    )
)
