-- Dead letters by stage and kind of reason (numbers in a reason, e.g. "time went backwards by
-- 1200 ms", are replaced by N so that one kind is one row), most frequent first.
SELECT
    stage,
    replaceRegexpAll(reason, '[0-9]+([.][0-9]+)?', 'N') AS reason,
    count() AS dead_letters,
    uniqExact(source) AS sources
FROM dead_letters FINAL
GROUP BY stage, reason
ORDER BY dead_letters DESC, stage, reason
