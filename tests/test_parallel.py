import math
import os
import re
import signal
import sys

import pytest

from mimir.parallel import default_workers, map_outcomes


@pytest.mark.parametrize("workers", [1, 2])
def test_one_failure_does_not_stop_the_batch(workers):
    # math.sqrt: picklable by reference in spawned workers, and it fails on negative input
    items = [0, 1, 4, -1, 9, 16]
    outcomes = list(map_outcomes(math.sqrt, items, workers=workers, max_pending=2))
    by_item = {o.item: o for o in outcomes}
    assert sorted(by_item) == sorted(items)
    assert not by_item[-1].ok
    assert by_item[-1].error == "math domain error"
    assert by_item[-1].error_type == "ValueError"
    assert {item: o.value for item, o in by_item.items() if o.ok} == {0: 0, 1: 1, 4: 2, 9: 3, 16: 4}


def test_default_workers_is_positive():
    assert default_workers() >= 1


def test_parts_by_exam_id_cover_every_exam_once_and_keep_exams_where_they_were():
    from mimir.parallel import Part

    exams = [f"{1000000 + index}_20201_2_0" for index in range(200)]
    parts = [Part(index, 4).select(exams, str) for index in range(4)]
    assert sorted(exam for part in parts for exam in part) == sorted(exams)
    assert all(25 <= len(part) <= 75 for part in parts)  # a hash spreads them, not one part holding all
    more = exams + [f"{2000000 + index}_20201_3_0" for index in range(50)]
    for index, part in enumerate(parts):
        assert set(part) <= set(Part(index, 4).select(more, str))  # adding exams moves none


def test_a_part_is_written_k_of_n_and_a_part_outside_the_split_is_refused():
    from mimir.parallel import Part, ShardError

    assert Part.parse("2/5") == Part(2, 5) and str(Part(2, 5)) == "2/5"
    for text in ("5/5", "1", "a/3", "-1/3", "1/0", ""):
        with pytest.raises(ShardError, match="K/N|does not exist"):
            Part.parse(text)


def test_worker_processes_limit_numerical_thread_pools(monkeypatch):
    import os

    from mimir.parallel import SINGLE_THREAD_VARIABLES

    for name in SINGLE_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # set by the user: kept
    outcomes = list(map_outcomes(os.getenv, list(SINGLE_THREAD_VARIABLES), workers=2))
    assert {o.item: o.value for o in outcomes} == {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "3"}


@pytest.fixture
def helpers(monkeypatch):
    """The helper module, importable by name here and in spawned workers (they inherit sys.path)."""
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return importlib.import_module("parallel_helpers")


def test_a_worker_that_dies_fails_only_its_own_item(helpers, caplog):
    from functools import partial

    from mimir.parallel import WORKER_DIED, WORKER_DIED_MESSAGE

    items = list(range(12))
    # the others sleep so that several are in flight, and taken down, when item 5 kills its worker
    func = partial(helpers.square_or_die, killers=frozenset({5}), seconds=0.05)
    with caplog.at_level("WARNING", logger="mimir.parallel"):
        outcomes = list(map_outcomes(func, items, workers=2, max_pending=4))
    assert sorted(o.item for o in outcomes) == items
    by_item = {o.item: o for o in outcomes}
    assert (by_item[5].ok, by_item[5].error_type, by_item[5].error) == (False, WORKER_DIED, WORKER_DIED_MESSAGE)
    assert {item: o.value for item, o in by_item.items() if item != 5} == {i: i * i for i in items if i != 5}
    assert all(o.ok for item, o in by_item.items() if item != 5)
    pool_breaks = [re.search(r"took down its pool with (\d+) items in flight", r.getMessage()) for r in caplog.records]
    taken_down = [int(match.group(1)) for match in pool_breaks if match]
    assert len(taken_down) == 1 and taken_down[0] > 1  # innocents were in flight, and were spared


def test_neighbouring_killers_do_not_blame_each_other_and_the_stream_stays_bounded(helpers):
    from functools import partial

    from mimir.parallel import WORKER_DIED

    consumed = 0

    def counted(n):
        nonlocal consumed
        for item in range(n):
            consumed += 1
            yield item

    func = partial(helpers.square_or_die, killers=frozenset({2, 3}))
    outcomes = []
    for outcome in map_outcomes(func, counted(10), workers=2, max_pending=3):
        outcomes.append(outcome)
        assert consumed <= len(outcomes) + 3  # never more than max_pending ahead, breaks or not
    by_item = {o.item: o for o in outcomes}
    assert sorted(by_item) == list(range(10)) and len(outcomes) == 10
    assert {item for item, o in by_item.items() if not o.ok} == {2, 3}
    assert {o.error_type for o in outcomes if not o.ok} == {WORKER_DIED}
    assert all(by_item[i].value == i * i for i in range(10) if i not in (2, 3))


def test_stopping_early_terminates_the_workers_instead_of_waiting_for_them(helpers):
    import multiprocessing

    before = set(multiprocessing.active_children())
    outcomes = map_outcomes(helpers.quick_first_then_slow, [0, 1, 2], workers=2)
    assert next(outcomes).item == 0
    workers = [process for process in multiprocessing.active_children() if process not in before]
    outcomes.close()  # as Ctrl-C, SIGTERM or an error in the caller would
    assert len(workers) == 2
    assert [process.exitcode for process in workers] == [-signal.SIGTERM] * 2


#: A middle process: starts a child running argv[1] (which reports through the shared stdout),
#: prints the child's pid, and waits to be killed.
_MIDDLE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdin=subprocess.PIPE)
print(child.pid, flush=True)
time.sleep(600)
"""
_GUARDED_CHILDREN = {
    "death signal": "import time\nfrom mimir.parallel import _set_parent_death_signal\n"
    "_set_parent_death_signal()\nprint('ready', flush=True)\ntime.sleep(600)",
    "watchdog": "import os\nfrom mimir.parallel import _watch_parent\n"
    "parent = os.getppid()\nprint('ready', flush=True)\n_watch_parent(parent, interval=0.05)",
    # started while its parent lives, guarded only once the parent is gone (stdin closes with it)
    "parent already gone": "import os, sys, time\nfrom mimir.parallel import die_with_parent\n"
    "parent = os.getppid()\nprint('ready', flush=True)\nsys.stdin.read()\n"
    "die_with_parent(parent)\nprint('survived', flush=True)\ntime.sleep(600)",
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; the death signal is Linux's")
@pytest.mark.parametrize("guard", list(_GUARDED_CHILDREN))
def test_a_worker_dies_with_its_parent(helpers, guard):
    import subprocess

    middle = subprocess.Popen(
        [sys.executable, "-c", _MIDDLE, _GUARDED_CHILDREN[guard]], stdout=subprocess.PIPE, text=True
    )
    assert middle.stdout is not None
    lines = [middle.stdout.readline().strip(), middle.stdout.readline().strip()]
    assert "ready" in lines, lines
    grandchild = int(next(line for line in lines if line != "ready"))
    try:
        middle.kill()
        middle.wait()
        assert helpers.survivors([grandchild]) == []
        assert middle.stdout.read() == ""  # in particular no "survived"
    finally:
        if helpers.process_alive(grandchild):
            os.kill(grandchild, signal.SIGKILL)
