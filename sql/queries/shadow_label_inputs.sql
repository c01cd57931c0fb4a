-- What a realised label needs, for every warm bar whose horizon has passed: the close, the
-- close `horizon` bars later and the features the threshold reads.
SELECT symbol, ts, close, close_ahead, vol_ewma, spread_bps
FROM
(
    SELECT
        symbol,
        ts,
        warm,
        close,
        values['vol_ewma'] AS vol_ewma,
        values['spread_bps'] AS spread_bps,
        leadInFrame(close, {horizon:UInt32}, 0.0) OVER (
            PARTITION BY symbol ORDER BY ts
            ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS close_ahead
    FROM features FINAL
)
WHERE warm AND close_ahead > 0
ORDER BY ts, symbol
