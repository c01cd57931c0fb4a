-- Every PPO update the learning flow made from closed trades.
CREATE TABLE IF NOT EXISTS rl_updates
(
    registry_version  String,
    ts                DateTime64(3, 'UTC'),
    policy_before     String,
    policy_after      String,
    transitions       UInt32,
    dropped           UInt32,
    mean_reward       Float64,
    policy_loss       Float64,
    value_loss        Float64,
    approx_kl         Float64,
    clip_fraction     Float64,
    param_change_norm Float64,
    seconds           Float64,
    written_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(written_at)
ORDER BY registry_version
