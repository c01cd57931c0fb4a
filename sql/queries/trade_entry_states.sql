-- Each trade's RL record at entry (the state the policy saw and the action it took).
SELECT trade_id, symbol, entry_ts, sizing, rl_state, rl_action, rl_stochastic
FROM trades FINAL
ORDER BY entry_ts, symbol
