SELECT
    (SELECT count() FROM bars FINAL)
    + (SELECT count() FROM features FINAL)
    + (SELECT count() FROM dead_letters FINAL)
    + (SELECT count() FROM signals FINAL)
    + (SELECT count() FROM supervisor_verdicts FINAL)
    + (SELECT count() FROM trades FINAL)
    + (SELECT count() FROM shadow_predictions FINAL)
    + (SELECT count() FROM trade_outcomes FINAL)
    + (SELECT count() FROM rl_updates FINAL)
    + (SELECT count() FROM clm_cycles FINAL)
    + (SELECT count() FROM drift_checks FINAL) AS rows
