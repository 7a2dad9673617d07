"""Which reference values a UK Biobank-like export lacks.

UK Biobank measured different things on different subsets of the imaged participants, so
a real targets table is mostly empty (73 % of the paper's values were missing). Masked
training only gets exercised if the synthetic reference is just as patchy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mimir.targets.catalog import Target, catalog


@dataclass(frozen=True)
class AvailabilityGroup:
    """Targets measured together: present for `share` of subjects, all or none."""

    name: str
    share: float
    #: Chance that a single value of a present group is still missing.
    item_dropout: float = 0.0


ALWAYS = AvailabilityGroup("demographics", share=1.0)
ANTHROPOMETRY = AvailabilityGroup("anthropometry", share=0.97, item_dropout=0.01)
ATLAS = AvailabilityGroup("atlas_body_composition", share=0.25, item_dropout=0.01)
LIVER_FAT = AvailabilityGroup("liver_fat", share=0.35, item_dropout=0.02)
ORGAN_VOLUMES = AvailabilityGroup("organ_volumes", share=0.22, item_dropout=0.02)
DXA = AvailabilityGroup("dxa", share=0.12, item_dropout=0.01)


def availability_group(target: Target) -> AvailabilityGroup:
    """The measurement session a target comes from."""
    if target.name in ("age", "sex"):
        return ALWAYS
    if target.name.startswith("Dxa"):
        return DXA
    if target.name.startswith("Atlas"):
        return ATLAS
    if target.name == "liverFat":
        return LIVER_FAT
    if target.module == "organs":
        return ORGAN_VOLUMES
    return ANTHROPOMETRY


def draw_presence(rng: np.random.Generator, targets: tuple[Target, ...] | None = None) -> dict[str, bool]:
    """For one subject: whether each target's reference value is present."""
    targets = targets or catalog()
    groups = {availability_group(t).name: availability_group(t) for t in targets}
    group_present = {name: bool(rng.random() < group.share) for name, group in sorted(groups.items())}
    presence = {}
    for target in targets:
        group = availability_group(target)
        presence[target.name] = group_present[group.name] and bool(rng.random() >= group.item_dropout)
    return presence
