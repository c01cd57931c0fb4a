-- Every verdict of the bias window on a BUY/SELL signal: allowed or blocked, why, and the
-- window's shares (including the judged signal) when it was judged.
CREATE TABLE IF NOT EXISTS supervisor_verdicts
(
    symbol      LowCardinality(String),
    ts          DateTime64(3, 'UTC'),
    action      LowCardinality(String),
    mode        LowCardinality(String),
    scope       LowCardinality(String),
    allowed     Bool,
    biased      Bool,
    reason      String,
    buy_share   Float64,
    sell_share  Float64,
    window_size UInt32,
    order       UInt64,
    written_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY (symbol, ts)
