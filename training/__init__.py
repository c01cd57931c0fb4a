"""Training orchestration: replaying history into training sets, the first-run bootstrap of
every model and the PPO policy, and the environment the policy is pretrained in. It drives the
stages of :mod:`operators` and the models of :mod:`models` offline; the live flow only calls it
to bootstrap an empty registry."""
