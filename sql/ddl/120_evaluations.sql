-- Learning ablations (python -m cli.evaluate): per metric, learning off and on over the same
-- replay, the on - off difference and its bootstrap interval, and the evaluation's verdict.
CREATE TABLE IF NOT EXISTS evaluations
(
    evaluation_id   String,
    metric          LowCardinality(String),
    off             Float64,
    on              Float64,
    diff            Float64,
    diff_low        Float64,
    diff_high       Float64,
    confidence      Float64,
    ticks           String,
    train_until     DateTime64(3, 'UTC'),
    replay_from     DateTime64(3, 'UTC'),
    replay_to       DateTime64(3, 'UTC'),
    settings        String,
    verdict         String,
    created_ts      DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(created_ts)
ORDER BY (evaluation_id, metric)
