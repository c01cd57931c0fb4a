-- One CLM cycle's latest row (a run resuming the shadow test an earlier run left open).
SELECT cycle_id, trigger, reason, status, started_ts, data_from, data_to, rows, train_metrics,
       shadow_metrics, versions, decisions, updated_ts, reasons, reference_version
FROM clm_cycles FINAL
WHERE cycle_id = {cycle_id:String}
