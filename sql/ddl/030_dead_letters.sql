-- Input that could not become a tick (or a later event), with the raw input and the reason.
-- id = source#row is deterministic, so a replay after a crash does not duplicate rows.
CREATE TABLE IF NOT EXISTS dead_letters
(
    id         String,
    source     String,
    row        Int64,
    ts         Nullable(DateTime64(3, 'UTC')),
    symbol     LowCardinality(String),
    stage      LowCardinality(String),
    reason     String,
    raw        String,
    written_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY id
