SELECT symbol, ts, action, confidence, consensus, warm, models, versions, actions, confidences,
       failed
FROM signals FINAL
ORDER BY symbol, ts
