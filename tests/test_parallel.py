import pytest

from mimir.parallel import default_workers, map_outcomes


def _square_or_fail(value: int) -> int:
    if value == 3:
        raise ValueError("three is broken")
    return value * value


@pytest.mark.parametrize("workers", [1, 2])
def test_one_failure_does_not_stop_the_batch(workers):
    outcomes = list(map_outcomes(_square_or_fail, range(6), workers=workers, max_pending=2))
    by_item = {o.item: o for o in outcomes}
    assert sorted(by_item) == list(range(6))
    assert not by_item[3].ok
    assert by_item[3].error == "three is broken"
    assert by_item[3].error_type == "ValueError"
    assert {item: o.value for item, o in by_item.items() if o.ok} == {0: 0, 1: 1, 2: 4, 4: 16, 5: 25}


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
