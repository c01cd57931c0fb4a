-- Per-model win rate over time (by exit day): a model is right on a trade when its vote
-- agreed with the trade's side and the trade won.
SELECT
    toDate(exit_ts) AS day,
    vote.1 AS model,
    countIf(vote.2 = if(side = 'long', 'BUY', 'SELL')) AS votes_with_trade,
    round(countIf(vote.2 = if(side = 'long', 'BUY', 'SELL') AND net_pnl > 0)
          / nullIf(countIf(vote.2 = if(side = 'long', 'BUY', 'SELL')), 0), 4) AS win_rate
FROM trades FINAL
ARRAY JOIN arrayZip(vote_models, vote_actions) AS vote
WHERE status = 'closed'
GROUP BY day, model
ORDER BY day, model
