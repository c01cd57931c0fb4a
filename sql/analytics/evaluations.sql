-- Every learning ablation (python -m cli.evaluate): learning off vs on, per metric, with the
-- difference's interval and the verdict.
SELECT evaluation_id, train_until, replay_from, replay_to, metric, off, on, diff, diff_low,
       diff_high, confidence, verdict
FROM evaluations FINAL
ORDER BY train_until, evaluation_id, metric
