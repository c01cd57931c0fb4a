SELECT symbol, ts, bar_start, feature_set, warm, close, values, window
FROM features FINAL
WHERE symbol = {symbol:String} AND feature_set = {feature_set:String}
ORDER BY ts
