-- Realised equity after every closed trade, in exit-time order: the trade's sub-account (one
-- per symbol: its equity after the trade, and its cumulative net PnL) and the portfolio
-- ({start_equity} plus the cumulative net PnL of all trades), each with its drawdown from its
-- running peak, the starting equity included.
SELECT
    exit_ts,
    trade_id,
    symbol,
    round(net_pnl, 4) AS net_pnl,
    round(equity_after, 4) AS symbol_equity,
    round(symbol_pnl, 4) AS symbol_net_pnl,
    round((symbol_peak - equity_after) / symbol_peak, 6) AS symbol_drawdown,
    round(equity, 4) AS equity,
    round(equity - {start_equity:Float64}, 4) AS total_net_pnl,
    round((peak - equity) / peak, 6) AS drawdown
FROM
(
    SELECT
        exit_ts, trade_id, symbol, net_pnl, equity_after, equity,
        sum(net_pnl) OVER (PARTITION BY symbol ORDER BY exit_ts, trade_id
                           ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS symbol_pnl,
        max(greatest(equity_after, equity_after - net_pnl)) OVER (
            PARTITION BY symbol ORDER BY exit_ts, trade_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS symbol_peak,
        greatest({start_equity:Float64}, max(equity) OVER (
            ORDER BY exit_ts, trade_id
            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)) AS peak
    FROM
    (
        SELECT exit_ts, trade_id, symbol, net_pnl, equity_after,
               {start_equity:Float64} + sum(net_pnl) OVER (
                   ORDER BY exit_ts, trade_id
                   ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS equity
        FROM trades FINAL
        WHERE status = 'closed'
    )
)
ORDER BY exit_ts, trade_id
