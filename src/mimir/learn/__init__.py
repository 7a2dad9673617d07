"""Training mean-variance networks: configuration, data, loss, the training loop.

Kept import-free so that light modules of this package do not pull in torch; the public entry
points are `mimir.learn.config.TrainConfig` and `mimir.learn.train.train` / `predict_images`.
"""
