-- Joined trades (entry state + outcome) as the learners consumed them.
CREATE TABLE IF NOT EXISTS trade_outcomes
(
    trade_id        String,
    symbol          LowCardinality(String),
    side            LowCardinality(String),
    entry_ts        DateTime64(3, 'UTC'),
    exit_ts         DateTime64(3, 'UTC'),
    exit_reason     LowCardinality(String),
    net_pnl         Float64,
    pnl_pct         Float64,
    sizing          LowCardinality(String),
    policy_version  String,
    reward          Float64,
    joined_from     LowCardinality(String),
    written_at      DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY trade_id
