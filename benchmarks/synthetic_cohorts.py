"""Synthetic cohorts for the benchmarks: every subject generated, or the run stops.

`generate_complete_cohort` is generate_cohort that refuses a cohort with failed subjects (a
benchmark on fewer subjects than it asked for would report figures for a cohort nobody chose).
`cached_cohort_truth` builds a cohort compressed into an image cache chunk by chunk:

Each chunk of `chunk` subjects is generated (seed + chunk index), compressed into ROOT/cache and
its zips deleted (300 subjects would otherwise hold ~37 GB of zips). A rerun skips the chunks
that finished; a chunk with a failed subject stops the run with the reasons, and is generated
again by the next run instead of being skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from mimir.synth import CohortConfig, CohortSummary


class CohortFailedError(RuntimeError):
    """Subjects of a chunk could not be generated."""


def chunk_finished(folder: Path) -> bool:
    """The chunk's cohort.json exists and records no failed subject."""
    record = folder / "cohort.json"
    return record.is_file() and not json.loads(record.read_text()).get("failed")


def generate_complete_cohort(config: CohortConfig, folder: Path, workers: int = 1) -> CohortSummary:
    """generate_cohort, raising CohortFailedError (with the first reason) when a subject failed."""
    from mimir.synth import generate_cohort

    summary = generate_cohort(config, folder, workers=workers)
    if summary.failed:
        eid, reason = next(iter(summary.failed.items()))
        raise CohortFailedError(f"{folder}: {len(summary.failed)} of {config.n} subjects failed, e.g. {eid}: {reason}")
    return summary


def cached_cohort_truth(root: Path, n: int, chunk: int, seed: int, workers: int) -> pd.DataFrame:
    """Generate and compress the cohort into root/cache (what is finished is kept); its truth table."""
    from mimir.imaging.compress import CompressOptions, compress_exams, discover_inputs
    from mimir.synth import CohortConfig

    cache = root / "cache"
    truths = []
    for index, start in enumerate(range(0, n, chunk)):
        folder = root / f"chunk_{index:03d}"
        if not chunk_finished(folder):
            generate_complete_cohort(CohortConfig(n=min(chunk, n - start), seed=seed + index), folder, workers)
            zips = sorted(folder.glob("*.zip"))
            compress_exams(discover_inputs(zips), CompressOptions(cache=cache), workers=workers)
            for path in zips:
                path.unlink()
        truths.append(pd.read_csv(folder / "truth.csv"))
    return pd.concat(truths, ignore_index=True).drop_duplicates(["eid", "instance"])
