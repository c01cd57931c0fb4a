-- Rolling hit rate in exit-time order: each model over the last 20 closed trades its vote
-- agreed with (BUY for long, SELL for short), the ensemble over its last 20 closed trades; a
-- hit is a trade that won (net PnL > 0), as in model_win_rate.
SELECT
    model,
    exit_ts,
    trade_id,
    won,
    round(avg(won) OVER w, 4) AS hit_rate,
    count() OVER w AS window_trades
FROM
(
    SELECT vote.1 AS model, exit_ts, trade_id, toUInt8(net_pnl > 0) AS won
    FROM trades FINAL
    ARRAY JOIN arrayZip(vote_models, vote_actions) AS vote
    WHERE status = 'closed' AND vote.2 = if(side = 'long', 'BUY', 'SELL')
    UNION ALL
    SELECT 'ensemble' AS model, exit_ts, trade_id, toUInt8(net_pnl > 0) AS won
    FROM trades FINAL
    WHERE status = 'closed'
)
WINDOW w AS (PARTITION BY model ORDER BY exit_ts, trade_id
             ROWS BETWEEN 19 PRECEDING AND CURRENT ROW)
ORDER BY model = 'ensemble', model, exit_ts, trade_id
