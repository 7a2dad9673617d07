import pytest

from mimir.learn.target_sets import resolve_module
from mimir.runs.config import ConfigError
from mimir.targets.catalog import UnknownModuleError, UnknownTargetError, module_targets


def test_paper_modules_follow_the_catalog():
    module = resolve_module("organs")
    assert module.targets == tuple(t.name for t in module_targets("organs"))


def test_custom_module_from_config():
    module = resolve_module("liver", {"liver": ["liverVolume", "liverFat"]})
    assert module.targets == ("liverVolume", "liverFat")


def test_custom_module_with_unknown_target_is_refused():
    with pytest.raises(UnknownTargetError, match="liverFatt"):
        resolve_module("liver", {"liver": ["liverFatt"]})


def test_custom_module_may_not_shadow_a_paper_module():
    with pytest.raises(ConfigError):
        resolve_module("age", {"age": ["height"]})


def test_unknown_module_lists_the_known_ones():
    with pytest.raises(UnknownModuleError, match="bodycomp"):
        resolve_module("nonsense")
