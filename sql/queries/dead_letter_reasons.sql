SELECT stage, reason, count() AS n
FROM dead_letters FINAL
GROUP BY stage, reason
ORDER BY n DESC
