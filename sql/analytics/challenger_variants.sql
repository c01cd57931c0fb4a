-- Warm-started against from-scratch challengers: how many, how often promoted, training cost.
SELECT
    if(endsWith(name, '.warm'), 'warm', 'scratch') AS variant,
    count() AS challengers,
    countIf(decisions[name] = 'promoted') AS promoted,
    round(countIf(decisions[name] = 'promoted') / count(), 3) AS promotion_rate,
    round(avg(train_metrics[concat('seconds.', name)]), 2) AS mean_train_seconds
FROM clm_cycles FINAL
ARRAY JOIN mapKeys(versions) AS name
GROUP BY variant
ORDER BY variant
