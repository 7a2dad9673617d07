"""Benchmark `mimir compress`: seconds per exam and peak memory per worker, by stage.

Generates (or takes) a synthetic cohort, then compresses every exam in a fresh child
process, one at a time, timing each stage and reading the child's peak resident memory.
Goals (issue 3): <= 1.0 s per exam per core, <= 1.5 GB peak per worker.

    python benchmarks/compress_speed.py --n 8            # synthetic cohort in a temp folder
    python benchmarks/compress_speed.py --zips DIR       # your own field-20201 zips
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthetic_cohorts import generate_complete_cohort

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from mimir.imaging.read import ExamInput, read_exam
from mimir.imaging.fusion import fuse_stations
from mimir.imaging.projection import build_representation
from mimir.imaging.quality import assess_quality
from mimir.imaging.cache import write_image

zip_path, cache = Path(sys.argv[1]), Path(sys.argv[2])
times = {}
cpu_start = time.process_time()
start = time.perf_counter()
exam = read_exam(ExamInput(path=zip_path, kind="zip"))
times["read"] = time.perf_counter() - start
mark = time.perf_counter()
volume = fuse_stations(exam.stations)
times["fusion"] = time.perf_counter() - mark
mark = time.perf_counter()
image = build_representation(volume)
times["projection"] = time.perf_counter() - mark
mark = time.perf_counter()
assess_quality(exam.stations, volume)
times["quality"] = time.perf_counter() - mark
mark = time.perf_counter()
write_image(cache, zip_path.stem, image)
times["write"] = time.perf_counter() - mark
times["total"] = time.perf_counter() - start
times["cpu"] = time.process_time() - cpu_start
times["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(times))
"""

#: Wall seconds per stage, then "cpu": CPU seconds of every thread of the exam's process
#: (what a busy machine pays; wall times miss helper threads spinning, e.g. BLAS pools).
STAGES = ("read", "fusion", "projection", "quality", "write", "total", "cpu")


def _cohort(n: int, seed: int, folder: Path) -> list[Path]:
    from mimir.synth import CohortConfig

    return generate_complete_cohort(CohortConfig(n=n, seed=seed), folder).zips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="synthetic exams to generate (default 8)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--zips", type=Path, help="folder of field-20201 zips to use instead")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        zips = sorted(args.zips.glob("*.zip")) if args.zips else _cohort(args.n, args.seed, scratch_path / "cohort")
        rows = []
        wall_start = time.perf_counter()
        for path in zips:
            result = subprocess.run(
                [sys.executable, "-c", _CHILD, str(path), str(scratch_path / "cache")],
                capture_output=True, text=True, check=True,
            )
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        wall = time.perf_counter() - wall_start

    print(f"{len(rows)} exams, one process per exam (imports excluded from the stage times)")
    print(f"{'stage':<12}{'median s':>10}{'max s':>10}")
    for stage in STAGES:
        values = [row[stage] for row in rows]
        print(f"{stage:<12}{statistics.median(values):>10.3f}{max(values):>10.3f}")
    peaks = [row["peak_mb"] for row in rows]
    print(f"{'peak MB':<12}{statistics.median(peaks):>10.0f}{max(peaks):>10.0f}")
    print(f"wall time including interpreter start-up: {wall / len(rows):.2f} s per exam")


if __name__ == "__main__":
    main()
