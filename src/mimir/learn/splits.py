"""Cross-validation folds: grouped by subject, stratified by the module's targets, written once.

Every exam (visit) of one participant lands in the same fold, so a network is never tested on
a subject whose other visit it was trained on. Folds are stratified: subjects are ordered by
how many of the module's targets they have (so missingness spreads evenly) and then by a
combined rank of their values (the mean over known targets of each value's rank among that
target's known values, scaled to 0..1); the ordered subjects are cut into consecutive blocks of
`folds` subjects and each block deals one subject to every fold in a seeded random order. Each
fold thus receives one subject from every stretch of the value range, and fold sizes differ by
at most one subject.

The assignment is written to `splits.json` once; later runs on the same folder read it back,
so folds trained on different machines or days always share one split.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mimir.atomic import atomic_write_text
from mimir.errors import MimirError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

SPLITS_FORMAT = 1


class SplitsError(MimirError, ValueError):
    """Folds that cannot be made, or a folder whose recorded folds differ from what is asked."""


@dataclass(frozen=True)
class Splits:
    """Which fold each subject (eid) belongs to, and how the assignment was made."""

    folds: int
    seed: int
    module: str
    targets: tuple[str, ...]
    fold_of_eid: dict[int, int]

    def fold_eids(self, fold: int) -> list[int]:
        return sorted(eid for eid, assigned in self.fold_of_eid.items() if assigned == fold)

    def fold_column(self, eids: "pd.Series") -> np.ndarray:
        """The fold of each eid in `eids`; an eid outside the split is an error."""
        unknown = sorted(set(map(int, eids)) - set(self.fold_of_eid))
        if unknown:
            raise SplitsError(f"{len(unknown)} subjects are not in the split (e.g. eid {unknown[0]})")
        return np.array([self.fold_of_eid[int(eid)] for eid in eids], dtype=int)

    def subject_counts(self) -> list[int]:
        counts = np.bincount(list(self.fold_of_eid.values()), minlength=self.folds)
        return [int(count) for count in counts]

    def to_json(self) -> str:
        data = {
            "format": SPLITS_FORMAT,
            "folds": self.folds,
            "seed": self.seed,
            "module": self.module,
            "targets": list(self.targets),
            "grouping": "subject (eid): every instance of a subject is in one fold",
            "stratification": "known-target count, then mean normalised rank of the module's targets",
            "subjects_per_fold": self.subject_counts(),
            "eids": {str(fold): self.fold_eids(fold) for fold in range(self.folds)},
        }
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Splits:
        data = json.loads(text)
        if data.get("format") != SPLITS_FORMAT:
            raise SplitsError(f"unsupported splits format {data.get('format')!r} (this MIMIR reads {SPLITS_FORMAT})")
        fold_of_eid = {int(eid): int(fold) for fold, eids in data["eids"].items() for eid in eids}
        return cls(int(data["folds"]), int(data["seed"]), str(data["module"]), tuple(data["targets"]), fold_of_eid)


def subject_scores(table: "pd.DataFrame", targets: tuple[str, ...] | list[str]) -> "pd.DataFrame":
    """Per eid: number of known targets and the mean normalised rank of its known values.

    A subject's value of a target is the mean over its visits. Ranks are average ranks among
    the subjects that know the target, mapped to 0..1, so every target weighs the same
    whatever its unit or spread.
    """
    import pandas as pd

    values = table[["eid", *targets]].apply(pd.to_numeric, errors="coerce")
    per_subject = values.groupby("eid", sort=True)[list(targets)].mean()
    known = per_subject.notna()
    ranks = per_subject.rank(method="average")
    counts = known.sum(axis=0).replace(0, 1)
    scaled = (ranks - 1).div((counts - 1).clip(lower=1), axis=1)
    return pd.DataFrame(
        {
            "eid": per_subject.index.astype("int64"),
            "n_known": known.sum(axis=1).to_numpy(dtype=int),
            "score": scaled.mean(axis=1, skipna=True).fillna(0.5).to_numpy(dtype=np.float64),
        }
    ).reset_index(drop=True)


def assign_folds(scores: "pd.DataFrame", folds: int, seed: int) -> dict[int, int]:
    """Deal ordered subjects round-robin, shuffling fold order within each block (see module doc)."""
    if folds < 2:
        raise SplitsError(f"cross-validation needs at least 2 folds, got {folds}")
    if len(scores) < folds:
        raise SplitsError(f"{len(scores)} subjects cannot fill {folds} folds")
    rng = np.random.default_rng([seed, 2])
    # Random tie-breaking first, so subjects with equal keys are not dealt in eid order.
    tie_break = rng.permutation(len(scores))
    order = np.lexsort((tie_break, scores["score"].to_numpy(), -scores["n_known"].to_numpy()))
    eids = scores["eid"].to_numpy()[order]
    fold_of_eid: dict[int, int] = {}
    filled = np.zeros(folds, dtype=int)
    for start in range(0, len(eids), folds):
        block = eids[start : start + folds]
        # In a final short block, the smallest folds (ties broken at random) take the subjects.
        candidates = np.lexsort((rng.permutation(folds), filled))[: len(block)]
        for eid, fold in zip(block, rng.permutation(candidates), strict=True):
            fold_of_eid[int(eid)] = int(fold)
            filled[fold] += 1
    return fold_of_eid


def make_splits(table: "pd.DataFrame", module: str, targets: tuple[str, ...], folds: int, seed: int) -> Splits:
    """Folds for the exams of `table` (eid, instance, target columns), grouped by eid."""
    scores = subject_scores(table, targets)
    splits = Splits(folds, seed, module, tuple(targets), assign_folds(scores, folds, seed))
    logger.info("split %d subjects into %d folds: %s subjects each", len(scores), folds, splits.subject_counts())
    return splits


def load_or_create_splits(
    path: Path, table: "pd.DataFrame", module: str, targets: tuple[str, ...], folds: int | None, seed: int
) -> Splits:
    """The splits recorded at `path` (a cross-validation folder's splits.json), or new ones
    written there; a mismatch is a SplitsError.

    `folds=None` accepts whatever the file records (10 for a new folder).
    """
    path = Path(path)
    if not path.exists():
        splits = make_splits(table, module, targets, 10 if folds is None else folds, seed)
        atomic_write_text(path, splits.to_json())
        return splits
    splits = Splits.from_json(path.read_text(encoding="utf-8"))
    asked = {"folds": splits.folds if folds is None else folds, "seed": seed, "module": module}
    recorded = {"folds": splits.folds, "seed": splits.seed, "module": splits.module}
    differing = [f"{key} {recorded[key]} (asked: {asked[key]})" for key in asked if asked[key] != recorded[key]]
    if differing:
        raise SplitsError(
            f"{path} records {', '.join(differing)}; a cross-validation folder keeps one split. "
            "Use the recorded settings or another output folder."
        )
    if tuple(splits.targets) != tuple(targets):
        raise SplitsError(f"{path} was made for targets {list(splits.targets)}, not {list(targets)}")
    present = set(map(int, table["eid"]))
    new, gone = sorted(present - set(splits.fold_of_eid)), sorted(set(splits.fold_of_eid) - present)
    if new or gone:
        raise SplitsError(
            f"the data differ from those {path} was made for: {len(new)} subjects are new, "
            f"{len(gone)} are gone (e.g. eid {(new or gone)[0]}); use another output folder"
        )
    return splits
