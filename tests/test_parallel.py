import math

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


def test_shards_cover_every_item_once():
    from mimir.parallel import shard

    items = list(range(10))
    parts = [shard(items, 3, part) for part in range(3)]
    assert sorted(x for part in parts for x in part) == items
    assert parts[0] == [0, 3, 6, 9]
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def test_worker_processes_limit_numerical_thread_pools(monkeypatch):
    import os

    from mimir.parallel import SINGLE_THREAD_VARIABLES

    for name in SINGLE_THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # set by the user: kept
    outcomes = list(map_outcomes(os.getenv, list(SINGLE_THREAD_VARIABLES), workers=2))
    assert {o.item: o.value for o in outcomes} == {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "3"}
