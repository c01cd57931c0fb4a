-- Shadow against production: on the bars a challenger voted on, how often it agreed with the
-- production model of the same name, and the action mix of both.
SELECT
    s.model AS model,
    s.version AS challenger_version,
    count() AS bars,
    round(countIf(s.action = sig.actions[indexOf(sig.models, s.model)]) / count(), 4)
        AS agreement,
    countIf(s.action != 'HOLD') AS challenger_calls,
    countIf(sig.actions[indexOf(sig.models, s.model)] != 'HOLD') AS production_calls
FROM (SELECT model, version, symbol, ts, action FROM shadow_predictions FINAL) AS s
INNER JOIN (SELECT symbol, ts, models, actions FROM signals FINAL) AS sig
    ON sig.symbol = s.symbol AND sig.ts = s.ts
GROUP BY model, challenger_version
ORDER BY model, challenger_version
