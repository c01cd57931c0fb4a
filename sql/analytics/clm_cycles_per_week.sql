-- Learning pipeline monitoring (audit 7.2.3): CLM cycles per week by trigger, with outcomes.
SELECT
    toMonday(started_ts) AS week,
    trigger,
    count() AS cycles,
    countIf(status = 'decided') AS decided,
    countIf(status = 'failed') AS failed,
    sum(length(arrayFilter(d -> d = 'promoted', mapValues(decisions)))) AS promotions,
    sum(length(arrayFilter(d -> d = 'retired', mapValues(decisions)))) AS rejections
FROM clm_cycles FINAL
GROUP BY week, trigger
ORDER BY week, trigger
