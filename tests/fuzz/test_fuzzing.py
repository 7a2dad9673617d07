"""The fuzzing harnesses run for a bounded time in every CI run, from a fixed seed.

A crash fails the test with the harness's report and leaves the input in the test's temporary
folder: turn it into a regression test beside the code it broke, then fix the code. For longer
campaigns run a harness by hand with another seed, e.g.
`python tests/fuzz/fuzz_exam_zip.py -max_total_time=3600 -seed=7`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

HERE = Path(__file__).parent
#: Seconds per harness; CI's default keeps the two at about two minutes together.
SECONDS = int(os.environ.get("MIMIR_FUZZ_SECONDS", "60"))
SEED = int(os.environ.get("MIMIR_FUZZ_SEED", "1"))


@pytest.mark.parametrize("harness", ["fuzz_exam_zip.py", "fuzz_export.py"])
def test_harness_finds_no_crash(harness, tmp_path):
    result = subprocess.run(
        [
            sys.executable, str(HERE / harness), f"-max_total_time={SECONDS}", f"-seed={SEED}",
            f"-artifact_prefix={tmp_path}/", "-print_final_stats=1",
        ],
        capture_output=True, text=True, timeout=SECONDS + 300, cwd=tmp_path,
    )
    report = "\n".join(line for line in result.stderr.splitlines() if "Instrumenting" not in line)[-4000:]
    crashes = sorted(tmp_path.glob("crash-*"))
    assert result.returncode == 0 and not crashes, f"{harness} found a crash ({crashes}):\n{report}"
    runs = [line for line in result.stderr.splitlines() if line.startswith("stat::number_of_executed_units")]
    assert runs and int(runs[0].split(":")[-1]) > 50, f"{harness} hardly ran:\n{report}"
