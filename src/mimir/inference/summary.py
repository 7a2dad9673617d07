"""What a prediction run tells the person who started it: counts, precisions, time per stage.

Kept out of the CLI so that the command and a notebook report a run in the same words.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mimir.inference.predict import PredictionResult


def summary_lines(result: PredictionResult) -> list[str]:
    """Lines that report a run: exams and failures, precision per module, seconds per stage, rate.

    A `write` stage in `result.timings` (the caller timing the table it wrote) counts in the total.
    """
    n_exams = len(result.table)
    lines = [
        f"{n_exams} exams ({result.compressed} compressed, {result.reused} already cached, {result.failed} failed) "
        f"on {result.device}, {result.precision}, batch {result.batch_size}"
    ]
    if result.precision != "float32":
        lines.append(f"  precision: {module_precisions(result.precision, result.module_precisions)}")
    ensembles = {name: counts for name, counts in result.module_members.items() if counts[1] > 1}
    if ensembles:
        lines.append(f"  member networks: {module_members(ensembles)}")
    lines += [f"  {stage:<32}{seconds:9.2f} s" for stage, seconds in result.timings.items() if stage != "total"]
    total = result.timings.get("total", 0.0) + result.timings.get("write", 0.0)
    rate = 60.0 * n_exams / total if total > 0 else float("nan")
    lines.append(f"  {'total':<32}{total:9.2f} s  ({rate:.1f} exams per minute)")
    if result.failed:
        lines.append(f"{result.failed} exams have no predictions: see the failure column")
    if result.excluded:
        lines.append(f"{len(result.excluded)} exams on the exclusion list were left out (they have no row)")
    return lines


def module_members(members: dict[str, tuple[int, int]]) -> str:
    """How many member networks each ensemble ran: 'body 5 of 5, organs 2 of 5 (--members)'."""
    return ", ".join(
        f"{name} {used} of {held}" + (" (--members)" if used < held else "") for name, (used, held) in members.items()
    )


def module_precisions(requested: str, precisions: dict[str, tuple[str, float | None]]) -> str:
    """What each module ran in and why: 'body bfloat16 (0.0031 sd from float32), organs float32 (...)'."""
    parts = []
    for name, (used, deviation) in precisions.items():
        if deviation is None:
            parts.append(f"{name} {used} (not checked: no exam reached it)")
        elif used == requested:
            parts.append(f"{name} {used} ({deviation:.4f} sd from float32)")
        else:
            parts.append(f"{name} {used} ({requested} was {deviation:.4f} sd from float32, over the tolerance)")
    return ", ".join(parts)
