"""Target sets: which catalog targets one network predicts (the paper calls each set a module).

The paper's four modules come from the catalog's module column; a configuration may add others
as lists of catalog target names. The order of targets fixes the network's output layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mimir.runs.config import ConfigError
from mimir.targets.catalog import UnknownModuleError, get_target, module_names, module_targets


@dataclass(frozen=True)
class ModuleDefinition:
    """A named, ordered set of catalog targets predicted by one network."""

    name: str
    targets: tuple[str, ...]


def paper_module(name: str) -> ModuleDefinition:
    return ModuleDefinition(name, tuple(target.name for target in module_targets(name)))


def custom_module(name: str, targets: Sequence[str]) -> ModuleDefinition:
    """A module of catalog targets; unknown or repeated names are errors."""
    if name in module_names():
        raise ConfigError(f"module {name!r} is one of the paper's modules; give a custom module another name")
    if not targets:
        raise ConfigError(f"module {name!r} has no targets")
    duplicates = sorted({t for t in targets if list(targets).count(t) > 1})
    if duplicates:
        raise ConfigError(f"module {name!r} lists targets more than once: {duplicates}")
    for target in targets:
        get_target(target)  # raises UnknownTargetError with near misses
    return ModuleDefinition(name, tuple(targets))


def resolve_module(name: str, custom: Mapping[str, Sequence[str]] | None = None) -> ModuleDefinition:
    """The module called `name`: a paper module or one defined in the configuration."""
    custom = custom or {}
    if name in custom:
        return custom_module(name, custom[name])
    if name in module_names():
        return paper_module(name)
    known = [*module_names(), *custom]
    raise UnknownModuleError(f"unknown module {name!r}; known modules: {', '.join(known)}")


def available_modules(custom: Mapping[str, Sequence[str]] | None = None) -> tuple[str, ...]:
    return (*module_names(), *(custom or {}))
