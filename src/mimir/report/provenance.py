"""Where a report's numbers come from: the MIMIR that wrote it, when, and each module's origin.

A report read a year later must say which software and which networks produced it. The module
side is read from what module.json records (`ModuleSpec.provenance`) or, for a cross-validation
that has not been packaged yet, from the folder's crossval.json; nothing is guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mimir.inference.modules import ModuleSpec

#: Leading hex digits shown of a checksum: enough to tell two files apart by eye.
CHECKSUM_DIGITS = 16


@dataclass(frozen=True)
class ModuleProvenance:
    """One module as a report's header lists it; every field is text as recorded ('' if not)."""

    name: str
    source: str
    format: str
    written_by: str
    created: str
    training: str
    notes: tuple[str, ...] = field(default_factory=tuple)


def report_stamp() -> dict[str, str]:
    """The MIMIR version and the moment (UTC, to the minute) a report page is written."""
    from mimir import __version__

    return {"MIMIR version": __version__, "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def network_summary(config: Mapping[str, Any]) -> str:
    """The training settings a reader compares first, from a config as config.toml holds it."""
    if not config.get("architecture"):
        return ""
    return (
        f"{config.get('architecture')} (init {config.get('init')}), {config.get('iterations')} iterations, "
        f"batch {config.get('batch_size')}, learning rate {config.get('learning_rate')}"
    )


def training_summary(config: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    """How the weights were obtained, in one line, from the config and data a module records.

    A module trained by MIMIR records its config and data summary; one converted from the
    published weights records the folder and the snapshot's checksum instead.
    """
    parts = [network_summary(config)]
    trained = (data.get("training") or {}).get("train") or {}
    if trained:
        parts.append(f"trained on {trained.get('n_subjects', '?')} subjects / {trained.get('n_exams', '?')} exams")
    if data.get("crossval_folder"):
        parts.append(f"calibrated on the cross-validation in {data['crossval_folder']}")
    if config.get("published_folder"):
        parts.append(f"converted from the published weights in {config['published_folder']}")
    if data.get("snapshot_sha256"):
        parts.append(f"snapshot sha256 {str(data['snapshot_sha256'])[:CHECKSUM_DIGITS]}\u2026")
    return "; ".join(part for part in parts if part)


def from_module_spec(spec: "ModuleSpec") -> ModuleProvenance:
    """A loaded module's provenance, as its module.json records it."""
    from mimir.inference.modules import FORMAT_NAME

    recorded = spec.provenance
    return ModuleProvenance(
        name=spec.name,
        source=recorded.source,
        format=f"{FORMAT_NAME} {spec.format_version}" + (f", {spec.n_members} member networks" if spec.n_members > 1 else ""),
        written_by=f"mimir {recorded.mimir_version}" if recorded.mimir_version else "",
        created=recorded.created,
        training=training_summary(recorded.config, recorded.data),
        notes=tuple(recorded.notes),
    )


def from_crossval_record(record: Mapping[str, Any], data: Mapping[str, Any]) -> ModuleProvenance:
    """The module being cross-validated, from crossval.json and data_summary.json.

    It is not packaged yet (no module format); its first session says which MIMIR ran it, when.
    """
    sessions = record.get("sessions") or [{}]
    first = sessions[0]
    version = (first.get("software") or {}).get("mimir", "")
    n_subjects, n_exams = data.get("n_subjects"), data.get("n_exams")
    cohort = f"{n_subjects} subjects / {n_exams} exams" if n_subjects is not None else ""
    folds = record.get("folds")
    parts = [network_summary(record.get("config") or {}), f"{folds}-fold cross-validation" if folds else "", cohort]
    return ModuleProvenance(
        name=str(record.get("module", data.get("module", ""))),
        source="cross-validation (this folder)",
        format="not packaged",
        written_by=f"mimir {version}" if version else "",
        created=str(first.get("started", "")),
        training="; ".join(part for part in parts if part),
    )
