-- One feature vector per symbol per closed bar, with the feature-set version that made it.
CREATE TABLE IF NOT EXISTS features
(
    symbol      LowCardinality(String),
    ts          DateTime64(3, 'UTC'),
    bar_start   DateTime64(3, 'UTC'),
    feature_set LowCardinality(String),
    warm        Bool,
    close       Float64,
    values      Map(LowCardinality(String), Float64),
    window      Array(Float32),
    written_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY (symbol, feature_set, ts)
