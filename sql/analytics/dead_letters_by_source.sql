-- Dead letters by input source (file or topic), most first, with how many kinds of reason.
SELECT
    source,
    count() AS dead_letters,
    uniqExact(reason) AS reasons,
    min(ts) AS first_ts,
    max(ts) AS last_ts
FROM dead_letters FINAL
GROUP BY source
ORDER BY dead_letters DESC, source
