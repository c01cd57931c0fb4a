SELECT symbol, seconds, start, end, open, high, low, close, volume, tick_count, vwap,
       buy_volume, sell_volume, quote_count, spread_mean, spread_max
FROM bars FINAL
WHERE symbol = {symbol:String} AND seconds = {seconds:UInt32}
ORDER BY start
