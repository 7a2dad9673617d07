"""Which batch-norm statistics should a trained network predict with? (issue 15's shared bias)

Takes a finished `ensemble_synthetic.py --members-from seeds` folder (its seed members in
OUT/seeds, its training and held-out caches) and scores every member, and their average, on the
held-out cohort and on the training cohort with the same weights and four sets of batch-norm
statistics:

    as saved                 what training left: the running statistics of training's shifted
                             batches (averaged with the weights when ema_decay > 0), or, for a run
                             trained with recompute_batch_norm, the recomputed ones
    recomputed, unshifted    the final weights' statistics over the training images as prediction
                             sees them (`Trainer.recompute_batch_norm`, what recompute_batch_norm does)
    recomputed, shifted      the same over the training images translated as in training
                             (--passes random translations of each)
    held-out batches         each batch of 32 held-out images normalised with its own statistics:
                             transductive, a diagnostic only (no prediction can do this)

    python benchmarks/batch_norm_statistics.py --out /tmp/shift_p100

Writes OUT/batch_norm_statistics_NAME.csv (variant, model, cohort, per target bias and MAE in
catalog units; NAME the held-out cohort, --held-out) and prints the ensemble's and each
member's figures.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ensemble_synthetic import TARGETS, cached_cohort

BATCH = 32


def cohort_images(out: Path, name: str) -> tuple[torch.Tensor, np.ndarray]:
    """A cohort's cached images (cache order) and its reference values in TARGETS order."""
    from mimir.imaging.cache import load_image

    paths, _, truth = cached_cohort(out / name / "cache", pd.read_csv(out / f"{name}_targets.csv"))
    return torch.from_numpy(np.stack([load_image(path) for path in paths])), truth[TARGETS].to_numpy(np.float64)


def batches(images: torch.Tensor, max_shift: int = 0, passes: int = 1, seed: int = 0) -> Iterator[tuple[torch.Tensor, None]]:
    """Full batches of BATCH images (a smaller last one left out, as training's recomputation
    does), translated by up to `max_shift` pixels with zero fill."""
    from mimir.learn.dataset import translate

    rng = np.random.default_rng(seed)
    for _ in range(passes):
        order = rng.permutation(len(images)) if max_shift else np.arange(len(images))
        for start in range(0, len(order) - BATCH + 1, BATCH):
            chunk = images[order[start : start + BATCH]]
            if max_shift:
                shifts = rng.integers(-max_shift, max_shift + 1, size=(len(chunk), 2))
                chunk = torch.from_numpy(np.stack([translate(image, int(dy), int(dx)) for image, (dy, dx) in
                                                   zip(chunk.numpy(), shifts, strict=True)]))
            yield chunk, None


def recomputed(network: torch.nn.Module, config, loader) -> torch.nn.Module:
    from mimir.learn.train import Trainer

    copied = copy.deepcopy(network)
    Trainer(config, copied, torch.device("cpu"), None).recompute_batch_norm(copied, loader)
    return copied


def predict(network: torch.nn.Module, images: torch.Tensor, *, batch_statistics: bool = False) -> np.ndarray:
    """Standardised means through the one forward path (train mode for `batch_statistics`)."""
    from mimir.forward import network_input, run_member
    from mimir.network import split_output

    network.train(batch_statistics)
    means = [split_output(run_member(network, network_input(images[start : start + BATCH], "cpu")))[0].numpy()
             for start in range(0, len(images), BATCH)]
    network.eval()
    return np.concatenate(means)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a finished ensemble_synthetic.py --members-from seeds folder")
    parser.add_argument("--passes", type=int, default=4, help="translated copies of each training image for 'recomputed, shifted'")
    parser.add_argument("--held-out", default="test",
                        help="the held-out cohort: OUT/NAME/cache and OUT/NAME_targets.csv (default: the benchmark's own)")
    args = parser.parse_args()

    from mimir.network import build_network
    from mimir.runs.config import TrainConfig
    from mimir.runs.layout import RunFolder
    from mimir.runs.standardization import read_standardization, to_units
    from safetensors.torch import load_file

    cohorts = {"held out": cohort_images(args.out, args.held_out), "training": cohort_images(args.out, "train")}
    train_images = cohorts["training"][0]
    values: dict[tuple[str, str], list[np.ndarray]] = {}
    for run in sorted((args.out / "seeds").glob("seed_*")):
        folder = RunFolder(run)
        config = TrainConfig.from_toml(folder.config)
        standardization = read_standardization(folder.standardization)
        order = [standardization.targets.index(target) for target in TARGETS]
        network = build_network(config.architecture, len(standardization.targets), input_pool=config.input_pool)
        network.load_state_dict(load_file(str(folder.weights)))
        network.eval()
        variants = {
            "as saved": network,
            "recomputed, unshifted": recomputed(network, config, batches(train_images)),
            "recomputed, shifted": recomputed(network, config, batches(train_images, config.max_shift, args.passes)),
            "held-out batches": network,
        }
        for variant, net in variants.items():
            for name, (images, _) in cohorts.items():
                if variant == "held-out batches" and name != "held out":
                    continue
                mean = predict(net, images, batch_statistics=variant == "held-out batches")
                value, _ = to_units(mean, np.zeros_like(mean), standardization.mean, standardization.sd)
                values.setdefault((variant, name), []).append(value[:, order])
        print(f"{run.name} scored", flush=True)

    rows = []
    for (variant, name), members in values.items():
        truth = cohorts[name][1]
        models = [(f"member {index}", member) for index, member in enumerate(members)] + [("ensemble", np.mean(members, axis=0))]
        for model, prediction in models:
            error = prediction - truth
            rows.append({"variant": variant, "model": model, "cohort": name,
                         **{f"{target}_bias": float(np.nanmean(error[:, i])) for i, target in enumerate(TARGETS)},
                         **{f"{target}_mae": float(np.nanmean(np.abs(error[:, i]))) for i, target in enumerate(TARGETS)}})
    table = pd.DataFrame(rows)
    table.to_csv(args.out / f"batch_norm_statistics_{args.held_out}.csv", index=False)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.precision", 3):
        print(table[table["cohort"] == "held out"].set_index(["variant", "model"]).drop(columns="cohort"))


if __name__ == "__main__":
    main()
