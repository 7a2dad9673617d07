import numpy as np
import pytest

from mimir.synth.missingness import ALWAYS, ANTHROPOMETRY, ATLAS, DXA, availability_group, draw_presence
from mimir.targets.catalog import catalog, get_target


def test_every_target_has_a_group():
    groups = {availability_group(t).name for t in catalog()}
    assert {ALWAYS.name, ANTHROPOMETRY.name, ATLAS.name, DXA.name} <= groups


@pytest.mark.parametrize(
    ("name", "expected_share"),
    [("age", 1.0), ("height", 0.97 * 0.99), ("AtlasVatVolume", 0.25 * 0.99), ("DxaTotalFatMass", 0.12 * 0.99)],
)
def test_presence_rates_match_uk_biobank_like_shares(name, expected_share):
    rng = np.random.default_rng(7)
    draws = [draw_presence(rng)[name] for _ in range(4000)]
    assert np.mean(draws) == pytest.approx(expected_share, abs=0.025)


def test_groups_are_present_together():
    rng = np.random.default_rng(3)
    atlas = [t.name for t in catalog() if availability_group(t) is ATLAS]
    for _ in range(200):
        presence = draw_presence(rng)
        present = sum(presence[name] for name in atlas)
        # all or nothing, up to the rare single-item dropout
        assert present == 0 or present >= len(atlas) - 3


def test_sex_is_always_present():
    rng = np.random.default_rng(0)
    assert all(draw_presence(rng)[get_target("sex").name] for _ in range(100))
