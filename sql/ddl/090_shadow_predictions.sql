-- Challenger (shadow) votes made beside production on live bars, never traded.
CREATE TABLE IF NOT EXISTS shadow_predictions
(
    model       LowCardinality(String),
    version     String,
    symbol      LowCardinality(String),
    ts          DateTime64(3, 'UTC'),
    action      LowCardinality(String),
    confidence  Float64,
    failed      Bool,
    written_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY (model, version, symbol, ts)
