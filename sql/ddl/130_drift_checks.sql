-- Every drift check of the continuous learner: the raw mean PSI, the statistic the noise level
-- was measured for, that noise level (the 95% quantile of same-size windows of the training
-- data) and the drift beyond it, which QT_CLM_DRIFT_THRESHOLD is compared with.
CREATE TABLE IF NOT EXISTS drift_checks
(
    ts              DateTime64(3, 'UTC'),
    reference       String,
    rows            UInt64,
    method          LowCardinality(String),
    raw             Float64,
    score           Float64,
    expected        Float64,
    null_level      Float64,
    corrected       Float64,
    threshold       Float64,
    fired           Bool
)
ENGINE = ReplacingMergeTree
ORDER BY (ts, reference)
