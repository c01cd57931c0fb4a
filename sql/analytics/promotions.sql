-- Every promotion and rejection a CLM cycle decided, with the shadow scores it decided on.
SELECT
    cycle_id,
    started_ts,
    trigger,
    model,
    decisions[model] AS decision,
    versions[model] AS challenger_version,
    round(shadow_metrics[concat(model, '.production_f1')], 4) AS production_f1,
    round(shadow_metrics[concat(model, '.challenger_f1')], 4) AS challenger_f1,
    toUInt32(shadow_metrics[concat(model, '.n')]) AS bars_compared
FROM clm_cycles FINAL
ARRAY JOIN mapKeys(decisions) AS model
WHERE status = 'decided'
ORDER BY started_ts, model
