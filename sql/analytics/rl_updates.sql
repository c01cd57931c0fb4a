-- RL policy updates over time: count, reward trend, losses and how far each update moved.
SELECT
    registry_version,
    ts,
    policy_before,
    policy_after,
    transitions,
    dropped,
    round(mean_reward, 5) AS mean_reward,
    round(avg(mean_reward) OVER (ORDER BY ts ROWS BETWEEN 4 PRECEDING AND CURRENT ROW), 5)
        AS reward_trend,
    round(policy_loss, 5) AS policy_loss,
    round(value_loss, 5) AS value_loss,
    round(approx_kl, 6) AS approx_kl,
    round(clip_fraction, 4) AS clip_fraction,
    round(param_change_norm, 6) AS param_change
FROM rl_updates FINAL
ORDER BY ts, registry_version
