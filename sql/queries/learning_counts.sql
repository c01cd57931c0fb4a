-- How much a run learned: PPO updates that used transitions, CLM cycles, and the challengers
-- promoted and retired.
SELECT
    (SELECT count() FROM rl_updates FINAL WHERE transitions > 0) AS rl_updates,
    (SELECT count() FROM clm_cycles FINAL) AS clm_cycles,
    (SELECT countIf(d = 'promoted') FROM clm_cycles FINAL ARRAY JOIN mapValues(decisions) AS d)
        AS promotions,
    (SELECT countIf(startsWith(d, 'retired')) FROM clm_cycles FINAL
        ARRAY JOIN mapValues(decisions) AS d) AS retirements
