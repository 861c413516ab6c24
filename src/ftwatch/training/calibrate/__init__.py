"""``--calibrate``: measure truncated copies of a run's model in real training steps.

- :mod:`ftwatch.analysis.estimate.truncate` (pure, shared with the estimate's meta step): the
  model's config cut to a few decoder layers, its per-layer lists too.
- :mod:`.truncated_model`: the copy, random weights, the run's dtype, attention and adapters.
- :mod:`.steps`: real ``Trainer`` steps on random tokens, measured by the probe.
- :mod:`.copies`: the cheap checks, then the 1- and 2-layer copies' steady peaks.

The extrapolation to the full depth is analysis' (:mod:`ftwatch.analysis.estimate.calibration`).
"""
