"""Continuous learning, which the decision engine runs inline (its PPO updates are a stage of
their own: :mod:`operators.policy_learner`).

- :mod:`learning.clm`: the continuous learner (triggers, cycles, shadow tests, promotions),
  with :mod:`learning.cycles` (data, training, publishing), :mod:`learning.trainer` (the
  training itself, in a child process), :mod:`learning.judge` (realised labels, paired rows),
  :mod:`learning.evidence` (the promotion test), :mod:`learning.drift` (drift beyond chance)
  and :mod:`learning.triggers` (event-time clocks, manual requests, the performance rule).
- :mod:`learning.learner`: the learning flow's stage, the same learners fed from a topic.

Is learning worth it at all? :mod:`cli.ablation` (``python -m cli.evaluate``) measures it.
"""
