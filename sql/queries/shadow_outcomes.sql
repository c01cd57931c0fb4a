-- A challenger's shadow votes beside the production vote of the same model on the same bars,
-- with what each bar's label needs: its close, the close `horizon` bars later (0 while not yet
-- known), and the features the label threshold reads.
SELECT
    s.symbol AS symbol,
    s.ts AS ts,
    s.action AS challenger,
    sig.actions[indexOf(sig.models, {model:String})] AS production,
    f.close AS close,
    f.close_ahead AS close_ahead,
    f.vol_ewma AS vol_ewma,
    f.spread_bps AS spread_bps
FROM
(
    SELECT symbol, ts, action
    FROM shadow_predictions FINAL
    WHERE model = {model:String} AND version = {version:String} AND NOT failed
) AS s
INNER JOIN
(
    SELECT symbol, ts, models, actions
    FROM signals FINAL
    WHERE warm AND has(models, {model:String})
) AS sig ON sig.symbol = s.symbol AND sig.ts = s.ts
INNER JOIN
(
    SELECT
        symbol,
        ts,
        close,
        values['vol_ewma'] AS vol_ewma,
        values['spread_bps'] AS spread_bps,
        leadInFrame(close, {horizon:UInt32}, 0.0) OVER (
            PARTITION BY symbol ORDER BY ts
            ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING) AS close_ahead
    FROM features FINAL
    WHERE feature_set = {feature_set:String} AND ts >= {since:DateTime64(3, 'UTC')}
) AS f ON f.symbol = s.symbol AND f.ts = s.ts
ORDER BY ts, symbol
