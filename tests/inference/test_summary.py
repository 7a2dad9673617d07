"""The report of a prediction run: counts, precision per module, seconds per stage, rate."""

from __future__ import annotations

import pandas as pd

from mimir.inference.predict import PredictionResult
from mimir.inference.summary import module_precisions, summary_lines


def result(precision: str = "float32", failures: tuple[str, ...] = ("", "", "open: not a zip")) -> PredictionResult:
    return PredictionResult(
        table=pd.DataFrame({"exam": [f"exam{index}" for index in range(len(failures))], "failure": list(failures)}),
        images={}, cache=None, device="cpu", precision=precision, batch_size=16,
        timings={"compress": 4.0, "module body": 2.0, "total": 6.5, "write": 0.5},
        compressed=2, reused=1,
        module_precisions={"body": ("bfloat16", 0.0031), "organs": ("float32", 0.05), "age": ("bfloat16", None)},
    )


def test_summary_counts_stages_total_and_rate():
    lines = summary_lines(result())
    assert lines[0] == "3 exams (2 compressed, 1 already cached, 1 failed) on cpu, float32, batch 16"
    assert lines[1:4] == [
        f"  {'compress':<32}{4.0:9.2f} s", f"  {'module body':<32}{2.0:9.2f} s", f"  {'write':<32}{0.5:9.2f} s",
    ]
    assert lines[4] == f"  {'total':<32}{7.0:9.2f} s  (25.7 exams per minute)"
    assert lines[5] == "1 exams have no predictions: see the failure column"
    assert len(lines) == 6


def test_reduced_precision_names_what_each_module_ran_in():
    lines = summary_lines(result("bfloat16", failures=("",)))
    assert lines[1] == (
        "  precision: body bfloat16 (0.0031 sd from float32), "
        "organs float32 (bfloat16 was 0.0500 sd from float32, over the tolerance), "
        "age bfloat16 (not checked: no exam reached it)"
    )
    assert not any("no predictions" in line for line in lines)
    assert module_precisions("float16", {}) == ""


def test_a_run_without_time_has_no_rate():
    empty = result()
    empty.timings = {}
    assert summary_lines(empty)[-2] == f"  {'total':<32}{0.0:9.2f} s  (nan exams per minute)"
