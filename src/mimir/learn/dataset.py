"""Cached images + targets as a torch dataset, with the published translation augmentation.

All randomness of training (which exams form batch i, how each image is shifted) is a pure
function of (seed, iteration), drawn in the main process by `TrainingBatches`. Resuming at
iteration i therefore replays exactly the batches an uninterrupted run would have seen, however
many DataLoader workers there are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, Sampler

from mimir.errors import MimirError, PathNotFoundError
from mimir.imaging.cache import cached_exams, load_image
from mimir.imaging.exclusions import read_exclusion_list

logger = logging.getLogger(__name__)

DEFAULT_INSTANCE = 2

ExamKey = tuple[int, int]  # (eid, instance)


class TrainingDataError(MimirError, ValueError):
    """Images and targets that cannot form a training or validation set."""


def index_image_cache(folder: Path) -> pd.DataFrame:
    """One row per cached exam: eid, instance, path (sorted by eid, instance)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PathNotFoundError(f"image cache folder not found: {folder}")
    rows, ignored = [], []
    for cached in cached_exams(folder):
        if cached.exam.eid is None:
            ignored.append(cached.path.name)
        else:
            rows.append((cached.exam.eid, cached.exam.instance, cached.path))
    if ignored:
        logger.warning(
            "ignored %d cache files not named {eid}_20201_{instance}_{array}.npy (e.g. %s)", len(ignored), ignored[0]
        )
    index = pd.DataFrame(rows, columns=["eid", "instance", "path"]).astype({"eid": "int64", "instance": "int64"})
    index = index.sort_values(["eid", "instance"], kind="stable")
    duplicated = index.duplicated(["eid", "instance"], keep="first")
    if duplicated.any():
        logger.warning("%d exams have several cache files; the first (lowest array index) is used", int(duplicated.sum()))
        index = index[~duplicated]
    return index.reset_index(drop=True)


def without_excluded(index: pd.DataFrame, exclude: str | Path | None) -> tuple[pd.DataFrame, int]:
    """The image index less the exams an exclusion list names (`mimir.imaging.exclusions`), and
    how many those were: an image with a known artefact must not teach the network."""
    if exclude is None:
        return index, 0
    exclusions = read_exclusion_list(exclude)
    listed = np.array(
        [exclusions.excludes(int(eid), int(instance)) for eid, instance in zip(index["eid"], index["instance"], strict=True)],
        dtype=bool,
    )
    count = int(listed.sum())
    logger.info("left out %d cached exams on the exclusion list %s", count, exclusions.source)
    return index[~listed].reset_index(drop=True), count


def read_targets(targets: pd.DataFrame | Path | str) -> pd.DataFrame:
    """A targets table with integer `eid` and `instance` (missing instance column -> 2)."""
    table = pd.read_csv(targets) if isinstance(targets, str | Path) else targets.copy()
    if "eid" not in table.columns:
        raise TrainingDataError("the targets table needs an `eid` column")
    if "instance" not in table.columns:
        table["instance"] = DEFAULT_INSTANCE
    table = table.astype({"eid": "int64", "instance": "int64"})
    duplicated = table.duplicated(["eid", "instance"])
    if duplicated.any():
        raise TrainingDataError(f"the targets table has {int(duplicated.sum())} repeated (eid, instance) rows")
    return table


def exam_keys(ids: Iterable[ExamKey] | pd.DataFrame) -> list[ExamKey]:
    """Exam ids given as (eid, instance) pairs or as a table with eid and instance columns."""
    if isinstance(ids, pd.DataFrame):
        return [(int(e), int(i)) for e, i in zip(ids["eid"], ids["instance"], strict=True)]
    return [(int(e), int(i)) for e, i in ids]


@dataclass
class ExamSet:
    """Exams usable for one module: image path and target values (catalog units)."""

    table: pd.DataFrame  # eid, instance, path, one column per target
    targets: tuple[str, ...]
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.table)

    def values(self) -> np.ndarray:
        return self.table[list(self.targets)].to_numpy(dtype=np.float64)

    def keys(self) -> list[ExamKey]:
        return exam_keys(self.table)


def assemble_exams(
    images: pd.DataFrame,
    targets: pd.DataFrame,
    target_names: Sequence[str],
    ids: Sequence[ExamKey] | None = None,
) -> ExamSet:
    """Exams that have an image and at least one known target of the module.

    `ids` restricts the set (a training or validation split); ids without an image or without a
    known target are counted in `dropped` rather than failing, so a split over the whole cohort
    can be reused for every module.
    """
    absent = [name for name in target_names if name not in targets.columns]
    if len(absent) == len(target_names):
        listed = ", ".join(target_names[:5]) + (", ..." if len(target_names) > 5 else "")
        raise TrainingDataError(f"the targets table has none of the module's targets ({listed})")
    if absent:
        logger.warning("targets table lacks %d of the module's targets; treated as unknown: %s", len(absent), ", ".join(absent))
    values = targets.reindex(columns=["eid", "instance", *target_names])
    values[list(target_names)] = values[list(target_names)].apply(pd.to_numeric, errors="coerce")
    dropped: dict[str, int] = {}
    candidates = images
    if ids is not None:
        wanted = pd.DataFrame(exam_keys(ids), columns=["eid", "instance"]).drop_duplicates()
        candidates = wanted.merge(images, on=["eid", "instance"], how="left")
        no_image = candidates["path"].isna()
        dropped["requested_without_image"] = int(no_image.sum())
        candidates = candidates[~no_image]
    merged = candidates.merge(values, on=["eid", "instance"], how="left", indicator=True)
    no_row = merged["_merge"] == "left_only"
    dropped["image_without_targets_row"] = int(no_row.sum())
    merged = merged[~no_row].drop(columns="_merge")
    no_known = merged[list(target_names)].isna().all(axis=1)
    dropped["no_known_target_of_module"] = int(no_known.sum())
    merged = merged[~no_known].sort_values(["eid", "instance"]).reset_index(drop=True)
    if ids is None:
        with_image = values[["eid", "instance"]].merge(images[["eid", "instance"]], on=["eid", "instance"])
        dropped["targets_row_without_image"] = len(values) - len(with_image)
    return ExamSet(merged, tuple(target_names), dropped)


def translate(image: np.ndarray, shift_rows: int, shift_columns: int) -> np.ndarray:
    """Shift an image (channels, rows, columns) by whole pixels, filling with zeros."""
    if shift_rows == 0 and shift_columns == 0:
        return image
    shifted = np.zeros_like(image)
    rows, columns = image.shape[-2:]
    if abs(shift_rows) >= rows or abs(shift_columns) >= columns:
        return shifted
    source_rows = slice(max(0, -shift_rows), rows - max(0, shift_rows))
    target_rows = slice(max(0, shift_rows), rows - max(0, -shift_rows))
    source_columns = slice(max(0, -shift_columns), columns - max(0, shift_columns))
    target_columns = slice(max(0, shift_columns), columns - max(0, -shift_columns))
    shifted[..., target_rows, target_columns] = image[..., source_rows, source_columns]
    return shifted


#: A dataset item request: (exam index, row shift, column shift).
ItemRequest = tuple[int, int, int]


class ExamImages(Dataset):
    """uint8 image tensors and standardised float32 targets, loaded from the cache on demand.

    Items are requested as (index, row shift, column shift), so augmentation is decided by the
    sampler, not by worker-local random state.
    """

    def __init__(self, paths: Sequence[Path], standardised_targets: np.ndarray) -> None:
        if len(paths) != len(standardised_targets):
            raise ValueError("one target row per image path is required")
        self.paths = [Path(p) for p in paths]
        self.targets = torch.as_tensor(np.asarray(standardised_targets, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, request: ItemRequest | int) -> tuple[torch.Tensor, torch.Tensor]:
        index, shift_rows, shift_columns = (request, 0, 0) if isinstance(request, int) else request
        image = translate(load_image(self.paths[index]), shift_rows, shift_columns)
        return torch.from_numpy(np.ascontiguousarray(image)), self.targets[index]


class TrainingBatches(Sampler[list[ItemRequest]]):
    """Batches for iterations [start, stop): epochs of seeded permutations, seeded shifts.

    Batch i takes positions i*B .. (i+1)*B - 1 of the endless sequence formed by concatenating
    permutation(seed, epoch 0), permutation(seed, epoch 1), ...; its shifts come from a generator
    seeded by (seed, i). Nothing depends on earlier batches, so any start point is exact.
    """

    def __init__(
        self, n_items: int, batch_size: int, max_shift: int, seed: int, start: int, stop: int,
        shift_probability: float = 1.0,
    ) -> None:
        if n_items < 1:
            raise ValueError("no training exams")
        self.n_items, self.batch_size, self.max_shift = n_items, batch_size, max_shift
        self.shift_probability = shift_probability
        self.seed, self.start, self.stop = seed, start, stop
        self._permutations: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            if len(self._permutations) > 1:  # keep the two newest: most batches span at most two epochs
                self._permutations.pop(min(self._permutations))
            self._permutations[epoch] = np.random.default_rng([self.seed, 0, epoch]).permutation(self.n_items)
        return self._permutations[epoch]

    def batch(self, iteration: int) -> list[ItemRequest]:
        positions = range(iteration * self.batch_size, (iteration + 1) * self.batch_size)
        indices = [int(self._permutation(p // self.n_items)[p % self.n_items]) for p in positions]
        shifts = np.random.default_rng([self.seed, 1, iteration]).integers(
            -self.max_shift, self.max_shift + 1, size=(self.batch_size, 2)
        )
        if self.shift_probability < 1.0:  # a stream of its own: with probability 1 batches stay as they were
            unshifted = np.random.default_rng([self.seed, 2, iteration]).random(self.batch_size) >= self.shift_probability
            shifts[unshifted] = 0
        return [(index, int(dy), int(dx)) for index, (dy, dx) in zip(indices, shifts, strict=True)]

    def __iter__(self) -> Iterator[list[ItemRequest]]:
        for iteration in range(self.start, self.stop):
            yield self.batch(iteration)
