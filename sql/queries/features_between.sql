-- Warm feature vectors of one feature set in an event-time window (drift checks, retraining).
SELECT symbol, ts, bar_start, feature_set, warm, close, values, window
FROM features FINAL
WHERE feature_set = {feature_set:String}
  AND ts > {since:DateTime64(3, 'UTC')} AND ts <= {until:DateTime64(3, 'UTC')}
ORDER BY symbol, ts
