-- Every challenger a CLM cycle decided: the evidence it was decided on (macro-F1 of both on the
-- same realised bars, the relative improvement with its interval at QT_CLM_PROMOTE_CONFIDENCE,
-- profit per bar of both models' calls, in basis points) and the reason in one line.
-- `model` names the challenger: <model> (from scratch) or <model>.warm (from production).
SELECT
    cycle_id,
    started_ts,
    trigger,
    model,
    decisions[model] AS decision,
    versions[model] AS challenger_version,
    round(shadow_metrics[concat(model, '.production_f1')], 4) AS production_f1,
    round(shadow_metrics[concat(model, '.challenger_f1')], 4) AS challenger_f1,
    round(shadow_metrics[concat(model, '.improvement')], 4) AS improvement,
    round(shadow_metrics[concat(model, '.improvement_low')], 4) AS improvement_low,
    round(shadow_metrics[concat(model, '.improvement_high')], 4) AS improvement_high,
    round(1e4 * shadow_metrics[concat(model, '.production_econ')], 3) AS production_bps_per_bar,
    round(1e4 * shadow_metrics[concat(model, '.challenger_econ')], 3) AS challenger_bps_per_bar,
    toUInt32(shadow_metrics[concat(model, '.n')]) AS bars_compared,
    reasons[model] AS reason
FROM clm_cycles FINAL
ARRAY JOIN mapKeys(decisions) AS model
ORDER BY started_ts, model
