SELECT
    (SELECT count() FROM bars FINAL) AS bars,
    (SELECT count() FROM features FINAL) AS features,
    (SELECT count() FROM dead_letters FINAL) AS dead_letters,
    (SELECT count() FROM signals FINAL) AS signals
