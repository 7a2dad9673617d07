"""Training mean-variance networks: data, target sets, loss, the training loop, cross-validation.

Kept import-free so that light modules of this package do not pull in torch; the public entry
points are `mimir.learn.train.train` / `predict_images` and `mimir.learn.crossval.run_crossval`,
configured by `mimir.runs.config.TrainConfig`.
"""
