"""Measurements of a trained checkpoint, as the papers make them.

* :mod:`~ddkit.evaluation.run`: ``evaluate``, everything ``ddkit eval`` measures, in one call
* :mod:`~ddkit.evaluation.quality`: the feature network for a run's data, reference features,
  FID / KID of a sampler's samples
* :mod:`~ddkit.evaluation.bpd`: bits/dim by the variational bound and the probability-flow ODE
* :mod:`~ddkit.evaluation.sweep`: sample quality against the number of model calls
* :mod:`~ddkit.evaluation.inversion`: DDIM inversion error and latent interpolation
* :mod:`~ddkit.evaluation.heldout`: the held-out images a checkpoint is measured on
* :mod:`~ddkit.evaluation.fid`: the Fréchet distance and KID of two feature sets
* :mod:`~ddkit.evaluation.features`: ddkit's classifier features for FID
* :mod:`~ddkit.evaluation.inception`: Inception-v3 with the FID weights, from a local file
* :mod:`~ddkit.evaluation.sharpness`: image sharpness, a detail diagnostic beside FID

Nothing is imported here: ``import ddkit.evaluation.fid`` loads only what it needs.
"""
