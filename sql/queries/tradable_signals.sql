-- The BUY/SELL signals execution could trade on: not blocked by the bias window (a signal
-- without a verdict was not judged: the supervisor was OFF). In decision-time order.
SELECT s.symbol AS symbol, s.ts AS ts, s.action AS action, s.confidence AS confidence
FROM (SELECT symbol, ts, action, confidence FROM signals FINAL WHERE action != 'HOLD') AS s
LEFT JOIN (SELECT symbol, ts, allowed FROM supervisor_verdicts FINAL) AS v
    ON v.symbol = s.symbol AND v.ts = s.ts
WHERE v.allowed OR v.symbol = ''
ORDER BY ts, symbol
