-- Closed per-symbol event-time bars. Replays rewrite the same key: ReplacingMergeTree keeps the
-- newest copy (read with FINAL).
CREATE TABLE IF NOT EXISTS bars
(
    symbol      LowCardinality(String),
    seconds     UInt32,
    start       DateTime64(3, 'UTC'),
    end         DateTime64(3, 'UTC'),
    open        Float64,
    high        Float64,
    low         Float64,
    close       Float64,
    volume      Float64,
    tick_count  UInt32,
    vwap        Float64,
    buy_volume  Float64,
    sell_volume Float64,
    quote_count UInt32,
    spread_mean Float64,
    spread_max  Float64,
    written_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY (symbol, seconds, start)
