-- The reward of every trade the learners consumed (trade_outcomes), in exit-time order, with
-- its trend: the mean of the last 20 rewards.
SELECT
    exit_ts,
    trade_id,
    symbol,
    policy_version,
    round(reward, 6) AS reward,
    round(avg(reward) OVER (ORDER BY exit_ts, trade_id
                            ROWS BETWEEN 19 PRECEDING AND CURRENT ROW), 6) AS reward_trend
FROM trade_outcomes FINAL
ORDER BY exit_ts, trade_id
