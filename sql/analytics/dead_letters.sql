-- Input that did not become a tick, in input order (the first 1000): where it came from
-- (source file or Kafka partition, row = line number or offset), the stage that rejected it,
-- the reason and the raw input. queries/dead_letter_reasons counts them per reason.
SELECT source, row, ts, symbol, stage, reason, raw
FROM dead_letters FINAL
ORDER BY source, row
LIMIT 1000
