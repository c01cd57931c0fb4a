-- The bias window over time: verdicts per hour, how many were blocked, and the mean shares.
SELECT
    toStartOfHour(ts) AS hour,
    count() AS verdicts,
    countIf(NOT allowed) AS blocked,
    countIf(biased) AS biased,
    round(avg(buy_share), 4) AS mean_buy_share,
    round(avg(sell_share), 4) AS mean_sell_share
FROM supervisor_verdicts FINAL
GROUP BY hour
ORDER BY hour
