-- Every challenger the continuous learner trained, from scratch or warm-started from
-- production (<model>.warm): its training time, its validation macro-F1 and what became of it.
SELECT
    cycle_id,
    started_ts,
    name AS challenger,
    if(endsWith(name, '.warm'), 'warm', 'scratch') AS variant,
    versions[name] AS version,
    round(train_metrics[concat('seconds.', name)], 2) AS train_seconds,
    round(train_metrics[concat(name, '.val_macro_f1')], 4) AS val_macro_f1,
    decisions[name] AS decision
FROM clm_cycles FINAL
ARRAY JOIN mapKeys(versions) AS name
ORDER BY started_ts, name
