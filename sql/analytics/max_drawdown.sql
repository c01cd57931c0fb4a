-- Largest peak-to-trough fall of realised equity: the portfolio starts at {start_equity} and
-- moves by each closed trade's net PnL in exit-time order.
SELECT
    count() AS trades,
    round(max(equity), 4) AS peak_equity,
    round(min(equity), 4) AS low_equity,
    round(max((peak - equity) / peak), 6) AS max_drawdown
FROM
(
    SELECT
        equity,
        max(equity) OVER (ORDER BY exit_ts, trade_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS peak
    FROM
    (
        SELECT exit_ts, trade_id,
               {start_equity:Float64} + sum(net_pnl) OVER (ORDER BY exit_ts, trade_id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS equity
        FROM trades FINAL
        WHERE status = 'closed'
    )
)
