-- Drift checks over time: raw PSI, the noise level for the window's size, and the drift beyond
-- it that triggers retraining above QT_CLM_DRIFT_THRESHOLD.
SELECT ts, reference, rows, method, round(raw, 4) AS raw_psi, round(null_level, 4) AS noise,
       round(corrected, 4) AS beyond_noise, threshold, fired
FROM drift_checks FINAL
ORDER BY ts
