"""Continuous learning (CLM) building blocks, plain Python so they test without a dataflow.

- :mod:`learning.drift`: PSI per feature against the training window (the drift trigger).
- :mod:`learning.triggers`: event-time clocks (time, drift, performance), manual retrain
  requests, and the performance rule.
- :mod:`learning.shadow`: the promotion rule for a shadow challenger.
"""
