-- Continuous-learning cycles: trigger, data, training and shadow metrics, decisions. The row
-- is rewritten as the cycle progresses (latest updated_ts wins under FINAL).
CREATE TABLE IF NOT EXISTS clm_cycles
(
    cycle_id        String,
    trigger         LowCardinality(String),
    reason          String,
    status          LowCardinality(String),
    started_ts      DateTime64(3, 'UTC'),
    data_from       Nullable(DateTime64(3, 'UTC')),
    data_to         Nullable(DateTime64(3, 'UTC')),
    rows            UInt64,
    train_metrics   Map(LowCardinality(String), Float64),
    shadow_metrics  Map(LowCardinality(String), Float64),
    versions        Map(LowCardinality(String), String),
    decisions       Map(LowCardinality(String), String),
    updated_ts      DateTime64(3, 'UTC'),
    reasons         Map(LowCardinality(String), String),
    reference_version String
)
ENGINE = ReplacingMergeTree(updated_ts)
ORDER BY cycle_id
