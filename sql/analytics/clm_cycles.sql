-- Every CLM cycle: trigger, status, data, shadow results and the decision per model.
SELECT cycle_id, trigger, status, reason, started_ts, data_from, data_to, rows, versions,
       decisions, shadow_metrics
FROM clm_cycles FINAL
ORDER BY started_ts, cycle_id
