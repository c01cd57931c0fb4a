"""Learning: the learners the decision engine runs inline, and their building blocks.

- :mod:`learning.rl_learner`: PPO updates from closed trades, exactly once.
- :mod:`learning.clm`: the continuous learner (triggers, cycles, shadow tests, promotions),
  with :mod:`learning.cycles` (data, training, publishing), :mod:`learning.trainer` (the
  training itself, in a child process), :mod:`learning.judge` (realised labels, paired rows),
  :mod:`learning.evidence` (the promotion test), :mod:`learning.drift` (drift beyond chance)
  and :mod:`learning.triggers` (event-time clocks, manual requests, the performance rule).
- :mod:`learning.ablation`: is learning worth it? (``python -m cli.evaluate``)
"""
