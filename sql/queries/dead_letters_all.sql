SELECT id, source, row, ts, symbol, stage, reason, raw
FROM dead_letters FINAL
ORDER BY source, row
