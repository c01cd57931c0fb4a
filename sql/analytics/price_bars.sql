-- One symbol's bar closes at each bar's end (event time), for drawing its trades on the price.
SELECT end AS ts, close
FROM bars FINAL
WHERE symbol = {symbol:String} AND seconds = {seconds:UInt32}
ORDER BY end
