-- One ensemble signal per symbol per bar (HOLD and warm-up included), with every model's
-- vote and the version that cast it (parallel arrays, in `models` order).
CREATE TABLE IF NOT EXISTS signals
(
    symbol       LowCardinality(String),
    ts           DateTime64(3, 'UTC'),
    bar_start    DateTime64(3, 'UTC'),
    action       LowCardinality(String),
    confidence   Float64,
    consensus    LowCardinality(String),
    buy_votes    Float64,
    sell_votes   Float64,
    volatility   Float64,
    vol_blocked  Bool,
    warm         Bool,
    feature_set  LowCardinality(String),
    models       Array(LowCardinality(String)),
    versions     Array(String),
    actions      Array(LowCardinality(String)),
    confidences  Array(Float64),
    failed       Array(Bool),
    weights      Array(Float64),
    written_at   DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY (symbol, ts)
