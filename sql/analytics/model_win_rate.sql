-- Per-model and ensemble win rate over closed trades. A model counts as right on a trade when
-- its vote agreed with the trade's side (BUY for long, SELL for short) and the trade won
-- (net PnL > 0); the ensemble is right whenever the trade won, since it chose the side.
SELECT model, votes_with_trade, right, round(right / nullIf(votes_with_trade, 0), 4) AS win_rate
FROM
(
    SELECT
        vote.1 AS model,
        countIf(vote.2 = if(side = 'long', 'BUY', 'SELL')) AS votes_with_trade,
        countIf(vote.2 = if(side = 'long', 'BUY', 'SELL') AND net_pnl > 0) AS right
    FROM trades FINAL
    ARRAY JOIN arrayZip(vote_models, vote_actions) AS vote
    WHERE status = 'closed'
    GROUP BY model
    UNION ALL
    SELECT 'ensemble' AS model, count() AS votes_with_trade, countIf(net_pnl > 0) AS right
    FROM trades FINAL
    WHERE status = 'closed'
)
ORDER BY model = 'ensemble', model
