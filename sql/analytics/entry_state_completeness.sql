-- Trades whose stored entry state is incomplete (the audit's two gaps); expected: none.
SELECT
    count() AS trades,
    countIf(status = 'closed') AS closed,
    countIf(length(mapKeys(features)) = 0) AS no_features,
    countIf(length(rl_state) = 0) AS no_rl_state,
    countIf(length(rl_action) = 0) AS no_rl_action,
    countIf(NOT isFinite(rl_log_prob)) AS no_log_prob,
    countIf(policy_version = '') AS no_policy_version,
    countIf(length(vote_models) != 4) AS not_four_votes
FROM trades FINAL
