"""The MIMIR module format: one network, or an ensemble of them, with everything needed to turn
their outputs into units.

A module is a folder (or a .zip / .tar archive of that folder) holding

    module.json            name, architecture, input representation, targets with their
                           standardisation, calibration factor and cross-validation metrics,
                           provenance, and the sha256 of the weights
    weights.safetensors    the (first) network's state dict (torchvision ResNet names)
    member_{i}.safetensors format 2 only: member i >= 1 of an ensemble
    ood.safetensors        optional: the description of the training images for the
                           out-of-distribution flag (mimir.inference.ood), made with member 0's
                           network; module.json's `ood` block records its summary and sha256
                           (modules without it load as before)

Format 1 holds one network. Format 2 holds M >= 2 member networks of one architecture and
targets (the K fold networks of a cross-validation, or networks trained with different seeds);
module.json lists them under `members`, each with its file, size, sha256, source and the
standardisation it was trained with (folds of a cross-validation each standardise on their own
training exams). Its `weights` block repeats member 0's file, so the checks of format 1 apply
unchanged to it. A module with one member is always written in format 1, which older MIMIRs
read; format 1 modules and imported published ones load as an ensemble of one.

Nothing in it is pickled, so loading a module from a stranger cannot execute code. Loading
checks, in this order, the format version, the input representation, the weights' size and
checksum, and the tensor names and shapes against the architecture; each failure has its own
exception so that callers and users see exactly what is wrong.

This file imports neither torch nor numpy at import time: `mimir module info` stays fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import struct
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mimir import __version__
from mimir.atomic import (
    UnwritableError,
    atomic_folder,
    atomic_path,
    check_can_create,
    remove_stale_temporaries,
    reported_write,
)
from mimir.errors import MimirError
from mimir.protocol import IMAGE_SHAPE, REPRESENTATION_VERSION

if TYPE_CHECKING:
    import numpy as np
    import torch

    from mimir.inference.postprocess import MemberMixture
    from mimir.inference.ood import OODDescription
    from mimir.network import MeanVarianceResNet

logger = logging.getLogger(__name__)

FORMAT_NAME = "mimir-module"
FORMAT_VERSION = 2
#: Format versions this MIMIR reads: 1 (one network) and 2 (one or more member networks).
READABLE_FORMAT_VERSIONS = (1, 2)
SPEC_FILE = "module.json"
WEIGHTS_FILE = "weights.safetensors"
OOD_FILE = "ood.safetensors"
_ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


# errors ------------------------------------------------------------------------------------------
class ModuleFormatError(MimirError, ValueError):
    """A module (or the inputs to build one) that cannot be used; subclasses say why."""


class ModuleMissingFileError(ModuleFormatError, FileNotFoundError):
    """A file the module (or a run / legacy folder) must hold is absent."""


class ModuleArchiveError(ModuleFormatError):
    """A module archive that cannot be read (corrupt, truncated, ambiguous layout)."""


class ModuleSpecError(ModuleFormatError):
    """module.json is not valid JSON or lacks / mistypes a field."""


class ModuleVersionError(ModuleFormatError):
    """The module was written in another format version than this MIMIR reads."""


class ModuleRepresentationError(ModuleVersionError):
    """The module expects another input representation than this MIMIR produces."""


class ModuleTruncatedError(ModuleFormatError):
    """The weights file is shorter than module.json records (an interrupted copy)."""


class ModuleChecksumError(ModuleFormatError):
    """The weights file's sha256 differs from module.json (altered or corrupted)."""


class ModuleWeightsError(ModuleFormatError):
    """The weights file is not a readable safetensors file."""


class ModuleOODError(ModuleFormatError):
    """The module's OOD description (ood.safetensors) is missing, altered or unreadable."""


class ModuleShapeError(ModuleFormatError):
    """Tensor names or shapes do not fit the architecture and number of targets."""


class ModuleMemberCountError(ModuleFormatError):
    """More (or fewer than one) member networks asked for than the module holds."""


class ModuleBuildError(ModuleFormatError):
    """A training run or cross-validation folder that cannot become a module."""


class ModuleOutputError(UnwritableError):
    """The module cannot be written where asked: a missing or read-only folder, a full disk."""


class ModuleExistsError(MimirError, FileExistsError):
    """A module would be written over an existing one without `overwrite`."""


# the specification -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetSpec:
    """One output of the network and how to turn it into a calibrated value in `unit`."""

    name: str
    ukb_field: int | None
    unit: str
    kind: str  # "continuous" or "binary"
    mean: float  # standardisation: value = network mean * sd + mean
    sd: float
    calibration: float = 1.0  # variance scale factor fitted on cross-validation predictions
    in_catalog: bool = True
    n_train: int | None = None  # known training values; 0 -> the output is meaningless (NaN)
    cv_metrics: dict[str, float] = field(default_factory=dict)
    sd_p99: float | None = None  # 99th percentile of the calibrated cross-validation sd


def member_file(index: int) -> str:
    """The weights file of member `index`: member 0 keeps format 1's name."""
    return WEIGHTS_FILE if index == 0 else f"member_{index}.safetensors"


@dataclass(frozen=True)
class MemberSpec:
    """One member network of an ensemble: its weights file and the standardisation it learnt in.

    `mean`, `sd` and `n_train` have one entry per target, in the module's target order;
    `sha256` and `bytes` are filled in when the module is written.
    """

    mean: tuple[float, ...]
    sd: tuple[float, ...]
    n_train: tuple[int | None, ...]
    source: str = ""  # where the network came from (a run or fold folder's name)
    file: str = ""
    sha256: str = ""
    bytes: int = 0


@dataclass(frozen=True)
class Provenance:
    """Where the weights came from, for a reader of module.json a year later."""

    source: str  # "training" or "legacy"
    mimir_version: str = __version__
    created: str = ""  # ISO 8601 (UTC) when the module was written
    config: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModuleSpec:
    """Everything in module.json."""

    name: str
    architecture: str
    targets: tuple[TargetSpec, ...]
    provenance: Provenance
    input_pool: int = 1
    representation_version: str = REPRESENTATION_VERSION
    image_shape: tuple[int, int, int] = IMAGE_SHAPE
    #: Clamp of the log-variance applied before post-processing (what training used); None: none.
    log_var_range: tuple[float, float] | None = None
    weights_sha256: str = ""
    weights_bytes: int = 0
    format_version: int = 1
    #: Format 2: every member network (member 0 included); empty for a one-network module,
    #: whose network is `weights_*` with the targets' standardisation.
    members: tuple[MemberSpec, ...] = ()
    #: The OOD description's summary plus its file, sha256 and bytes; None: the module has none.
    ood: dict[str, Any] | None = None

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(target.name for target in self.targets)

    @property
    def n_members(self) -> int:
        """How many member networks the module holds (1 for format 1 and published modules)."""
        return max(1, len(self.members))

    def member_files(self) -> list[tuple[str, str, int]]:
        """(file, sha256, bytes) of every member, in order."""
        if not self.members:
            return [(WEIGHTS_FILE, self.weights_sha256, self.weights_bytes)]
        return [(member.file, member.sha256, member.bytes) for member in self.members]

    def member_standardization(self, member: int = 0) -> tuple[Any, Any, Any]:
        """Member `member`'s standardisation: mean, sd and untrained-target mask, numpy (T,) arrays."""
        import numpy as np

        if not self.members:
            if member != 0:
                raise IndexError(f"module {self.name!r} has one member network, not member {member}")
            mean = [target.mean for target in self.targets]
            sd = [target.sd for target in self.targets]
            n_train = [target.n_train for target in self.targets]
        else:
            chosen = self.members[member]
            mean, sd, n_train = list(chosen.mean), list(chosen.sd), list(chosen.n_train)
        return np.array(mean, dtype=np.float64), np.array(sd, dtype=np.float64), np.array([n == 0 for n in n_train])

    @property
    def n_outputs(self) -> int:
        return 2 * len(self.targets)

    def to_json(self) -> str:
        document = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "name": self.name,
            "architecture": self.architecture,
            "input_pool": self.input_pool,
            "input": {
                "representation_version": self.representation_version,
                "shape": list(self.image_shape),
                "dtype": "uint8",
                "network_input": "float32 of the stored values (0-255), no normalisation",
            },
            "output": {
                "layout": "per target interleaved (mean, log_variance) of the standardised target",
                "log_var_range": None if self.log_var_range is None else list(self.log_var_range),
            },
            "targets": [_target_to_json(target) for target in self.targets],
            "provenance": {
                "source": self.provenance.source,
                "mimir_version": self.provenance.mimir_version,
                "created": self.provenance.created,
                "config": self.provenance.config,
                "data": self.provenance.data,
                "notes": list(self.provenance.notes),
            },
            "weights": {"file": WEIGHTS_FILE, "sha256": self.weights_sha256, "bytes": self.weights_bytes},
        }
        if self.members:
            document["members"] = [_member_to_json(member) for member in self.members]
        if self.ood is not None:
            document["ood"] = self.ood
        return json.dumps(_json_safe(document), indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes) -> ModuleSpec:
        try:
            document = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ModuleSpecError(f"{SPEC_FILE} is not valid JSON (truncated or edited?): {error}") from error
        if not isinstance(document, dict):
            raise ModuleSpecError(f"{SPEC_FILE} must hold a JSON object")
        if document.get("format") != FORMAT_NAME:
            raise ModuleVersionError(f"{SPEC_FILE} is not a {FORMAT_NAME} (format: {document.get('format')!r})")
        version = document.get("format_version")
        if version not in READABLE_FORMAT_VERSIONS or isinstance(version, bool):
            raise ModuleVersionError(
                f"module format version {version!r} is not supported: this MIMIR ({__version__}) reads "
                f"versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))}; use the MIMIR version that wrote the module or rebuild it"
            )
        return _spec_from_document(document)


def _member_to_json(member: MemberSpec) -> dict[str, Any]:
    return {
        "file": member.file,
        "sha256": member.sha256,
        "bytes": member.bytes,
        "source": member.source,
        "standardization": {"mean": list(member.mean), "sd": list(member.sd), "n_train": list(member.n_train)},
    }


def _checked_sha256(value: str, where: str) -> str:
    if len(value) != 64 or any(char not in "0123456789abcdef" for char in value):
        raise ModuleSpecError(f"{SPEC_FILE}: {where}sha256 is not a sha256 hex digest: {value!r}")
    return value


def _members_from_document(document: Mapping[str, Any], n_targets: int) -> tuple[MemberSpec, ...]:
    """Format 2's `members`: at least two, files member_file(i), one standardisation entry per target."""
    raw = _get(document, "members", list, "")
    if len(raw) < 2:
        raise ModuleSpecError(f"{SPEC_FILE}: a format 2 module lists at least two members, got {len(raw)}")
    members = []
    for index, item in enumerate(raw):
        where = f"members[{index}]."
        if not isinstance(item, dict):
            raise ModuleSpecError(f"{SPEC_FILE}: members[{index}] must be an object")
        file = _get(item, "file", str, where)
        if file != member_file(index):
            raise ModuleSpecError(f"{SPEC_FILE}: {where}file must be {member_file(index)!r}, got {file!r}")
        standardization = _get(item, "standardization", dict, where)
        values = {}
        for key in ("mean", "sd", "n_train"):
            listed = _get(standardization, key, list, where + "standardization.")
            if len(listed) != n_targets:
                raise ModuleSpecError(
                    f"{SPEC_FILE}: {where}standardization.{key} has {len(listed)} entries for {n_targets} targets"
                )
            values[key] = listed
        try:
            mean = tuple(float(value) for value in values["mean"])
            sd = tuple(float(value) for value in values["sd"])
            n_train = tuple(None if value is None else int(value) for value in values["n_train"])
        except (TypeError, ValueError) as error:
            raise ModuleSpecError(f"{SPEC_FILE}: {where}standardization holds a non-number: {error}") from error
        if not all(math.isfinite(value) for value in mean) or not all(math.isfinite(value) and value > 0 for value in sd):
            raise ModuleSpecError(f"{SPEC_FILE}: {where}standardization needs finite means and positive sds")
        members.append(MemberSpec(
            mean=mean, sd=sd, n_train=n_train, source=str(item.get("source") or ""), file=file,
            sha256=_checked_sha256(_get(item, "sha256", str, where), where),
            bytes=_get(item, "bytes", int, where),
        ))
    return tuple(members)


def _target_to_json(target: TargetSpec) -> dict[str, Any]:
    return {
        "name": target.name,
        "ukb_field": target.ukb_field,
        "unit": target.unit,
        "kind": target.kind,
        "in_catalog": target.in_catalog,
        "standardization": {"mean": target.mean, "sd": target.sd},
        "calibration_factor": target.calibration,
        "n_train": target.n_train,
        "cv_metrics": target.cv_metrics,
        "sd_p99": target.sd_p99,
    }


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null (strict JSON); other non-JSON values become strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _json_safe(value.item())
    return str(value)


def _get(document: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in document:
        raise ModuleSpecError(f"{SPEC_FILE}: {where}{key} is missing")
    value = document[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
        raise ModuleSpecError(f"{SPEC_FILE}: {where}{key} has the wrong type ({type(value).__name__}: {value!r})")
    return value


def _optional_float(document: Mapping[str, Any], key: str, where: str) -> float | None:
    if document.get(key) is None:
        return None
    return _get(document, key, float, where)


def _spec_from_document(document: Mapping[str, Any]) -> ModuleSpec:
    raw_targets = _get(document, "targets", list, "")
    if not raw_targets:
        raise ModuleSpecError(f"{SPEC_FILE}: targets is empty")
    targets = tuple(_target_from_document(item, index) for index, item in enumerate(raw_targets))
    names = [target.name for target in targets]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ModuleSpecError(f"{SPEC_FILE}: targets repeat names {repeated}")
    input_block = _get(document, "input", dict, "")
    shape = _get(input_block, "shape", list, "input.")
    output_block = _get(document, "output", dict, "")
    clamp = output_block.get("log_var_range")
    if clamp is not None and (not isinstance(clamp, list) or len(clamp) != 2 or not clamp[0] < clamp[1]):
        raise ModuleSpecError(f"{SPEC_FILE}: output.log_var_range must be null or [low, high], got {clamp!r}")
    provenance_block = _get(document, "provenance", dict, "")
    weights_block = _get(document, "weights", dict, "")
    if _get(weights_block, "file", str, "weights.") != WEIGHTS_FILE:
        raise ModuleSpecError(f"{SPEC_FILE}: weights.file must be {WEIGHTS_FILE!r}")
    checksum = _checked_sha256(_get(weights_block, "sha256", str, "weights."), "weights.")
    version = _get(document, "format_version", int, "")
    members = _members_from_document(document, len(targets)) if version >= 2 else ()
    if members and (members[0].sha256, members[0].bytes) != (checksum, _get(weights_block, "bytes", int, "weights.")):
        raise ModuleSpecError(f"{SPEC_FILE}: members[0] and weights describe different {WEIGHTS_FILE} files")
    input_pool = _get(document, "input_pool", int, "")
    if input_pool < 1:
        raise ModuleSpecError(f"{SPEC_FILE}: input_pool must be >= 1, got {input_pool}")
    return ModuleSpec(
        name=_get(document, "name", str, ""),
        architecture=_get(document, "architecture", str, ""),
        targets=targets,
        provenance=Provenance(
            source=_get(provenance_block, "source", str, "provenance."),
            mimir_version=_get(provenance_block, "mimir_version", str, "provenance."),
            created=_get(provenance_block, "created", str, "provenance."),
            config=_get(provenance_block, "config", dict, "provenance."),
            data=_get(provenance_block, "data", dict, "provenance."),
            notes=tuple(_get(provenance_block, "notes", list, "provenance.")),
        ),
        input_pool=input_pool,
        representation_version=_get(input_block, "representation_version", str, "input."),
        image_shape=tuple(int(size) for size in shape),  # type: ignore[arg-type]
        log_var_range=None if clamp is None else (float(clamp[0]), float(clamp[1])),
        weights_sha256=checksum,
        weights_bytes=_get(weights_block, "bytes", int, "weights."),
        format_version=version,
        members=members,
        ood=_ood_block(document),
    )


def _ood_block(document: Mapping[str, Any]) -> dict[str, Any] | None:
    """The optional `ood` block: its file, sha256 and size are checked here, the rest by mimir.inference.ood."""
    if document.get("ood") is None:
        return None
    block = _get(document, "ood", dict, "")
    if _get(block, "file", str, "ood.") != OOD_FILE:
        raise ModuleSpecError(f"{SPEC_FILE}: ood.file must be {OOD_FILE!r}")
    checksum = _get(block, "sha256", str, "ood.")
    if len(checksum) != 64 or any(char not in "0123456789abcdef" for char in checksum):
        raise ModuleSpecError(f"{SPEC_FILE}: ood.sha256 is not a sha256 hex digest: {checksum!r}")
    _get(block, "bytes", int, "ood.")
    return dict(block)


def _target_from_document(item: Any, index: int) -> TargetSpec:
    where = f"targets[{index}]."
    if not isinstance(item, dict):
        raise ModuleSpecError(f"{SPEC_FILE}: targets[{index}] must be an object")
    standardization = _get(item, "standardization", dict, where)
    field_value = item.get("ukb_field")
    if field_value is not None and (not isinstance(field_value, int) or isinstance(field_value, bool)):
        raise ModuleSpecError(f"{SPEC_FILE}: {where}ukb_field must be an integer or null")
    metrics = _get(item, "cv_metrics", dict, where)
    n_train = item.get("n_train")
    target = TargetSpec(
        name=_get(item, "name", str, where),
        ukb_field=field_value,
        unit=_get(item, "unit", str, where),
        kind=_get(item, "kind", str, where),
        mean=_get(standardization, "mean", float, where + "standardization."),
        sd=_get(standardization, "sd", float, where + "standardization."),
        calibration=_get(item, "calibration_factor", float, where),
        in_catalog=_get(item, "in_catalog", bool, where),
        n_train=None if n_train is None else _get(item, "n_train", int, where),
        cv_metrics={str(key): float(value) for key, value in metrics.items() if isinstance(value, int | float)},
        sd_p99=_optional_float(item, "sd_p99", where),
    )
    _check_target(target, f"{SPEC_FILE}: {where[:-1]}")
    return target


def _check_target(target: TargetSpec, where: str) -> None:
    if not target.name:
        raise ModuleSpecError(f"{where}: empty target name")
    if not math.isfinite(target.mean):
        raise ModuleSpecError(f"{where} ({target.name}): standardisation mean must be finite, got {target.mean}")
    if not (math.isfinite(target.sd) and target.sd > 0):
        raise ModuleSpecError(f"{where} ({target.name}): standardisation sd must be finite and positive, got {target.sd}")
    if not (math.isfinite(target.calibration) and target.calibration > 0):
        raise ModuleSpecError(f"{where} ({target.name}): calibration factor must be finite and positive, got {target.calibration}")


# reading a module folder or archive --------------------------------------------------------------
def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(_ARCHIVE_SUFFIXES)


def _archive_member(names: Sequence[str], member: str, path: Path) -> str | None:
    """`member` at the archive root or inside one top-level folder (an archived module folder)."""
    candidates = [
        name for name in names
        if name == member or (name.endswith("/" + member) and name.count("/") == 1)
    ]
    if len(candidates) > 1:
        raise ModuleArchiveError(f"{path}: several {member} in the archive ({', '.join(candidates)})")
    return candidates[0] if candidates else None


def _read_member(path: Path, member: str) -> bytes:
    """The bytes of one module file, from a folder, a zip or a tar archive."""
    path = Path(path)
    if not path.exists():
        raise ModuleMissingFileError(f"module not found: {path}")
    if path.is_dir():
        file = path / member
        if not file.is_file():
            raise ModuleMissingFileError(f"{path} is not a complete module: {member} is missing")
        return file.read_bytes()
    if not _is_archive(path):
        raise ModuleFormatError(f"{path} is neither a module folder nor a .zip / .tar archive of one")
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as archive:
                name = _archive_member(archive.namelist(), member, path)
                if name is None:
                    raise ModuleMissingFileError(f"{path}: the archive holds no {member}")
                return archive.read(name)
        with tarfile.open(path, "r:*") as archive:
            regular = [info.name for info in archive.getmembers() if info.isfile()]
            name = _archive_member(regular, member, path)
            if name is None:
                raise ModuleMissingFileError(f"{path}: the archive holds no {member}")
            extracted = archive.extractfile(name)
            assert extracted is not None  # regular files always extract
            return extracted.read()
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as error:
        if isinstance(error, ModuleFormatError):
            raise
        raise ModuleArchiveError(f"{path}: unreadable module archive (truncated or corrupt?): {error}") from error


def read_spec(path: Path | str) -> ModuleSpec:
    """The parsed module.json of a module folder or archive (no weights read, no torch)."""
    try:
        return ModuleSpec.from_json(_read_member(Path(path), SPEC_FILE))
    except ModuleFormatError as error:
        if str(path) in str(error):
            raise
        raise type(error)(f"{path}: {error}") from error


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def module_digest(path: Path | str) -> str:
    """The sha256 of a module's module.json, which holds every member's checksum and the
    calibration: two modules with one digest predict alike (a Dask worker keeps the networks it
    loaded under it, `mimir.inference.cluster_prediction`)."""
    return sha256_hex(_read_member(Path(path), SPEC_FILE))


def check_representation(spec: ModuleSpec, path: Path | str, expected: str = REPRESENTATION_VERSION) -> None:
    """Refuse a module made for another input representation than the images this MIMIR makes."""
    if spec.representation_version != expected:
        raise ModuleRepresentationError(
            f"{path}: the module expects input representation {spec.representation_version!r} but this "
            f"MIMIR produces {expected!r}; recompress the images with a matching MIMIR or retrain"
        )


def _check_weights_bytes(
    spec: ModuleSpec, data: bytes, source: Path, file: str = WEIGHTS_FILE, sha256: str | None = None, size: int | None = None
) -> None:
    """`data` (the module's `file`) has the size and sha256 module.json records (default: weights)."""
    sha256 = spec.weights_sha256 if sha256 is None else sha256
    size = spec.weights_bytes if size is None else size
    if len(data) < size:
        raise ModuleTruncatedError(
            f"{source}: {file} has {len(data)} bytes, module.json records {size} "
            "(an interrupted copy or download?)"
        )
    checksum = sha256_hex(data)
    if len(data) != size or checksum != sha256:
        raise ModuleChecksumError(
            f"{source}: {file} does not match module.json (sha256 {checksum[:16]}..., "
            f"{len(data)} bytes; expected {sha256[:16]}..., {size} bytes): "
            "the weights were altered or corrupted"
        )


def safetensors_shapes(data: bytes, source: str = WEIGHTS_FILE) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header, without torch or reading the tensors."""
    if len(data) < 8:
        raise ModuleWeightsError(f"{source}: too short to be a safetensors file ({len(data)} bytes)")
    (header_length,) = struct.unpack("<Q", data[:8])
    if 8 + header_length > len(data):
        raise ModuleWeightsError(f"{source}: safetensors header runs past the end of the file")
    try:
        header = json.loads(data[8 : 8 + header_length])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ModuleWeightsError(f"{source}: unreadable safetensors header: {error}") from error
    if not isinstance(header, dict):
        raise ModuleWeightsError(f"{source}: safetensors header is not an object")
    shapes: dict[str, tuple[int, ...]] = {}
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shapes[name] = tuple(int(size) for size in entry["shape"])
            data_end = max(data_end, int(entry["data_offsets"][1]))
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ModuleWeightsError(f"{source}: malformed safetensors entry {name!r}") from error
    if 8 + header_length + data_end > len(data):
        raise ModuleWeightsError(f"{source}: tensor data runs past the end of the file (truncated?)")
    return shapes


def _check_head_shapes(spec: ModuleSpec, shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """The final layer must have two outputs per target: the commonest mismatch, named plainly."""
    missing = [key for key in ("fc.weight", "fc.bias") if key not in shapes]
    if missing:
        raise ModuleShapeError(f"{source}: the weights lack the final layer ({', '.join(missing)})")
    out_features = shapes["fc.weight"][0]
    if out_features != spec.n_outputs or shapes["fc.bias"] != (spec.n_outputs,):
        raise ModuleShapeError(
            f"{source}: the final layer has {out_features} outputs but the module lists "
            f"{len(spec.targets)} targets (needs 2 per target = {spec.n_outputs})"
        )


def _empty_network(spec: ModuleSpec, source: str) -> MeanVarianceResNet:
    """The spec's network on the meta device: shapes without the cost of initialising weights."""
    import torch

    from mimir.network import MeanVarianceResNet

    try:
        with torch.device("meta"):
            return MeanVarianceResNet(spec.architecture, len(spec.targets), spec.input_pool)
    except ValueError as error:
        raise ModuleSpecError(f"{source}: {error}") from error


def check_state_against_architecture(spec: ModuleSpec, shapes: Mapping[str, Sequence[int]], source: str) -> None:
    """Raise unless tensors of these names and shapes are exactly the spec's network."""
    _check_head_shapes(spec, {key: tuple(value) for key, value in shapes.items()}, source)
    network = _empty_network(spec, source)
    expected = {key: tuple(tensor.shape) for key, tensor in network.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise ModuleShapeError(
            f"{source}: the weights are not a {spec.architecture}: missing {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
    wrong = [key for key in expected if tuple(shapes[key]) != expected[key]]
    if wrong:
        key = wrong[0]
        raise ModuleShapeError(
            f"{source}: {len(wrong)} tensors do not fit a {spec.architecture}, e.g. {key} has shape "
            f"{tuple(shapes[key])}, expected {expected[key]}"
        )


# writing -----------------------------------------------------------------------------------------
def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_module_output(out: Path | str, *, overwrite: bool) -> Path:
    """Fail before any work when a module cannot be written at `out`: it exists (without
    `overwrite`), it is an archive other than .zip, or its folder cannot take new files."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise ModuleExistsError(f"{out} already exists; choose another path or overwrite it explicitly")
    if _is_archive(out) and not out.name.lower().endswith(".zip"):
        raise ModuleFormatError(f"{out}: modules are written as a folder or a .zip archive")
    try:
        check_can_create(out, parents=True)
    except UnwritableError as error:
        raise ModuleOutputError(str(error)) from error
    return out


def save_module(
    spec: ModuleSpec,
    state_dict: Mapping[str, torch.Tensor],
    out: Path | str,
    *,
    overwrite: bool = False,
    ood: OODDescription | None = None,
) -> Path:
    """Write a one-network module (format 1) folder, or a .zip when `out` ends so, atomically.

    The checksum, size and creation date in `spec` are filled in here; the state dict is checked
    against the architecture first, so a module that cannot load is never written. `ood` adds
    the out-of-distribution description (OOD_FILE, its summary and sha256 in module.json).
    """
    return save_ensemble(dataclasses.replace(spec, members=()), [state_dict], out, overwrite=overwrite, ood=ood)


def _weights_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save as safetensors_bytes

    tensors = {key: tensor.detach().to("cpu").contiguous() for key, tensor in state_dict.items()}
    # One metadata key: safetensors writes its metadata map in a per-process order, so two keys
    # would make the same weights a different file (and checksum) on every build.
    return safetensors_bytes(tensors, metadata={"format": FORMAT_NAME})


def save_ensemble(
    spec: ModuleSpec,
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    out: Path | str,
    *,
    overwrite: bool = False,
    ood: OODDescription | None = None,
) -> Path:
    """Write a module of one or more member networks (`state_dicts`, in member order) atomically.

    With several, `spec.members` gives each member's standardisation and source (one per state
    dict) and the module is format 2; one state dict makes a format 1 module (`spec.members`
    then ignored, the targets' standardisation being that network's). Files, sizes, checksums and
    the creation date are filled in here; every state dict is checked against the architecture
    first, so a module that cannot load is never written. `ood` adds the out-of-distribution
    description (OOD_FILE, its summary and sha256 in module.json).
    """
    out = check_module_output(out, overwrite=overwrite)
    for index, target in enumerate(spec.targets):
        _check_target(target, f"targets[{index}]")
    if not spec.targets:
        raise ModuleSpecError("a module needs at least one target")
    if not state_dicts:
        raise ModuleSpecError("a module needs at least one network")
    ensemble = len(state_dicts) > 1
    if ensemble and len(spec.members) != len(state_dicts):
        raise ModuleSpecError(
            f"module {spec.name!r}: {len(state_dicts)} networks but {len(spec.members)} member descriptions"
        )
    blobs = []
    for index, state_dict in enumerate(state_dicts):
        shapes = {key: tuple(tensor.shape) for key, tensor in state_dict.items()}
        where = f"weights for module {spec.name!r}" + (f", member {index}" if ensemble else "")
        check_state_against_architecture(spec, shapes, where)
        blobs.append(_weights_bytes(state_dict))
    provenance = dataclasses.replace(spec.provenance, created=spec.provenance.created or now_iso())
    members: tuple[MemberSpec, ...] = ()
    if ensemble:
        members = tuple(
            dataclasses.replace(member, file=member_file(index), sha256=sha256_hex(blob), bytes=len(blob))
            for index, (member, blob) in enumerate(zip(spec.members, blobs, strict=True))
        )
        for member in members:
            _check_member(member, len(spec.targets))
    ood_bytes = ood.to_bytes() if ood is not None else None
    final = dataclasses.replace(
        spec, provenance=provenance, weights_sha256=sha256_hex(blobs[0]), weights_bytes=len(blobs[0]),
        format_version=2 if ensemble else 1, members=members,
        ood=None if ood is None or ood_bytes is None else {
            "file": OOD_FILE, "sha256": sha256_hex(ood_bytes), "bytes": len(ood_bytes), **ood.summary(),
        },
    )
    files = {SPEC_FILE: final.to_json().encode("utf-8")}
    files.update({member_file(index): blob for index, blob in enumerate(blobs)})
    if ood_bytes is not None:
        files[OOD_FILE] = ood_bytes
    _write_module_files(out, files)
    logger.info(
        "wrote module %s (%d targets, %s, %d member network%s) to %s",
        spec.name, len(spec.targets), spec.architecture, len(blobs), "s" if ensemble else "", out,
    )
    return out


def save_with_spec(source: Path | str, spec: ModuleSpec, out: Path | str, *, overwrite: bool = False) -> Path:
    """Write module `source` again at `out` with `spec` as its module.json (new calibration,
    provenance): the weights and the OOD description are copied byte for byte, each checked
    first against the checksums `spec` records, so the copy is as sound as a fresh build."""
    source, out = Path(source), check_module_output(out, overwrite=overwrite)
    if out.resolve() == source.resolve():
        raise ModuleOutputError(f"{out} is the module being read: write the new module to another path")
    files = {SPEC_FILE: spec.to_json().encode("utf-8")}
    for (file, _, _), data in zip(spec.member_files(), _checked_member_weights(source, spec), strict=True):
        files[file] = data
    ood_bytes = _checked_ood_bytes(source, spec)
    if ood_bytes is not None:
        files[OOD_FILE] = ood_bytes
    _write_module_files(out, files)
    logger.info("wrote module %s (from %s) to %s", spec.name, source, out)
    return out


def _check_member(member: MemberSpec, n_targets: int) -> None:
    if not (len(member.mean) == len(member.sd) == len(member.n_train) == n_targets):
        raise ModuleSpecError(f"member {member.file}: its standardisation must have one entry per target ({n_targets})")
    if not all(math.isfinite(value) for value in member.mean) or not all(math.isfinite(value) and value > 0 for value in member.sd):
        raise ModuleSpecError(f"member {member.file}: standardisation means must be finite and sds positive")


def _write_module_files(out: Path, files: Mapping[str, bytes]) -> None:
    """A module's files as a folder or a .zip at `out`, atomically: all of them or, on failure,
    nothing (an existing module there is left as it was)."""
    kept = "nothing was written" + (" (the module already there is unchanged)" if out.exists() else "")
    with reported_write(out, kept):
        if _is_archive(out):
            _write_zip(out, files)
        else:
            _write_folder(out, files)


def _write_zip(out: Path, files: Mapping[str, bytes]) -> None:
    remove_stale_temporaries(out.parent, out.name)  # left by a killed earlier write of this module
    with atomic_path(out) as temporary:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, data in files.items():
                archive.writestr(f"{out.stem}/{name}", data)


def _write_folder(out: Path, files: Mapping[str, bytes]) -> None:
    """Build the folder beside `out`, then rename: readers never see a half-written module."""
    with atomic_folder(out) as staging:
        for name, data in files.items():
            with (staging / name).open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())


# loading -----------------------------------------------------------------------------------------
@dataclass
class LoadedModule:
    """A module ready to predict: its spec and its member networks in eval mode (`network` is
    member 0; a one-network module has just that one)."""

    spec: ModuleSpec
    network: MeanVarianceResNet
    source: Path
    networks: list[MeanVarianceResNet] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.networks:
            self.networks = [self.network]

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def predict_members(
        self, images: np.ndarray | torch.Tensor, batch_size: int = 16, members: int | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per member (the first `members`; None: all): calibrated mean and sd (N, T) of that
        network alone, for stored (N, 3, 256, 256) uint8 images."""
        from mimir.inference.postprocess import postprocess

        raws = self._raw_outputs(images, batch_size, members)
        return [postprocess(raw, self.spec, member) for member, raw in enumerate(raws)]

    def predict_mixture(self, images: np.ndarray | torch.Tensor, batch_size: int = 16, members: int | None = None) -> MemberMixture:
        """The calibrated mixture of the first `members` members (None: all): mean, total,
        aleatoric and epistemic sd (N, T) for stored (N, 3, 256, 256) uint8 images."""
        from mimir.inference.postprocess import combine_members

        return combine_members(self._raw_outputs(images, batch_size, members), self.spec)

    def predict_arrays(self, images: np.ndarray | torch.Tensor, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated mean and (total) sd (N, T) in target units for stored (N, 3, 256, 256) uint8 images."""
        mixture = self.predict_mixture(images, batch_size)
        return mixture.mean, mixture.sd

    def _raw_outputs(self, images: np.ndarray | torch.Tensor, batch_size: int, members: int | None) -> list[np.ndarray]:
        import numpy as np
        import torch

        from mimir.forward import network_input, run_member

        batch_all = torch.as_tensor(images)
        if batch_all.dtype != torch.uint8 or tuple(batch_all.shape[1:]) != tuple(self.spec.image_shape):
            raise ValueError(f"expected (N, {', '.join(map(str, self.spec.image_shape))}) uint8 images, got {tuple(batch_all.shape)} {batch_all.dtype}")
        networks = self.networks[: check_member_count(self.spec, members)]
        outputs: list[list[np.ndarray]] = [[] for _ in networks]
        for network in networks:
            network.eval()
        for start in range(0, len(batch_all), batch_size):
            batch = network_input(batch_all[start : start + batch_size], self.device, channels_last=False)
            for number, network in enumerate(networks):
                outputs[number].append(run_member(network, batch).cpu().numpy())
        empty = np.zeros((0, self.spec.n_outputs), dtype=np.float32)
        return [np.concatenate(parts) if parts else empty for parts in outputs]


def members_to_run(spec: ModuleSpec, requested: int | None) -> int:
    """How many members a prediction runs: the first `requested`, or all of them when none was
    asked for or the module has fewer (`--members` applies to every module of a run, and a
    one-network module next to an ensemble runs its one network)."""
    return spec.n_members if requested is None else min(requested, spec.n_members)


def check_member_count(spec: ModuleSpec, members: int | None) -> int:
    """How many members to use: `members` (1..n_members) or all of them when None."""
    if members is None:
        return spec.n_members
    if isinstance(members, bool) or not isinstance(members, int) or not 1 <= members <= spec.n_members:
        raise ModuleMemberCountError(
            f"module {spec.name!r} has {spec.n_members} member network{'s' if spec.n_members > 1 else ''}: "
            f"cannot use {members!r} (give 1 to {spec.n_members})"
        )
    return members


def _checked_member_weights(path: Path, spec: ModuleSpec, members: int | None = None) -> list[bytes]:
    """The bytes of the first `members` member networks (None: all), each checked for size,
    sha256 and final layer against module.json, in member order."""
    blobs = []
    for file, sha256, size in spec.member_files()[: check_member_count(spec, members)]:
        data = _read_member(path, file)
        _check_weights_bytes(spec, data, path, file, sha256, size)
        _check_head_shapes(spec, safetensors_shapes(data, f"{path}: {file}"), f"{path}: {file}")
        blobs.append(data)
    return blobs


def verify_module(path: Path | str) -> ModuleSpec:
    """The spec of a module whose weights (and OOD description) match it (no torch; the
    representation is not judged)."""
    path = Path(path)
    spec = read_spec(path)
    _checked_member_weights(path, spec)
    _checked_ood_bytes(path, spec)
    return spec


def _checked_ood_bytes(path: Path, spec: ModuleSpec) -> bytes | None:
    """The OOD description's bytes after their size and checksum were checked; None without one."""
    if spec.ood is None:
        return None
    try:
        data = _read_member(path, OOD_FILE)
    except ModuleMissingFileError as error:
        raise ModuleOODError(f"{path}: module.json records an OOD description but {OOD_FILE} is missing") from error
    if len(data) != spec.ood["bytes"] or sha256_hex(data) != spec.ood["sha256"]:
        raise ModuleOODError(
            f"{path}: {OOD_FILE} does not match module.json (sha256 {sha256_hex(data)[:16]}..., {len(data)} bytes; "
            f"expected {str(spec.ood['sha256'])[:16]}..., {spec.ood['bytes']} bytes): altered or corrupted"
        )
    return data


def read_ood(path: Path | str, spec: ModuleSpec | None = None) -> OODDescription | None:
    """The module's OOD description, checked against module.json; None for a module without one."""
    from mimir.inference.ood import OODDescription, OODError

    path = Path(path)
    spec = spec or read_spec(path)
    data = _checked_ood_bytes(path, spec)
    if data is None or spec.ood is None:
        return None
    try:
        return OODDescription.from_parts(spec.ood, data, f"{path}: {OOD_FILE}")
    except OODError as error:
        raise ModuleOODError(str(error)) from error


def load_module(
    path: Path | str,
    device: str = "cpu",
    *,
    expected_representation: str | None = REPRESENTATION_VERSION,
    members: int | None = None,
) -> LoadedModule:
    """Check a module completely and return its member networks in eval mode on `device`.

    `members` loads only the first that many member networks (None: all; checked against the
    module). `expected_representation` None accepts a module made for another input
    representation (for inspection; its predictions on our images would be wrong).
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    path = Path(path)
    spec = read_spec(path)
    if expected_representation is not None:
        check_representation(spec, path, expected_representation)
    networks = []
    for (file, _, _), data in zip(spec.member_files(), _checked_member_weights(path, spec, members), strict=False):
        try:
            state = load_safetensors(data)
        except (SafetensorError, ValueError, RuntimeError) as error:
            raise ModuleWeightsError(f"{path}: {file} cannot be read: {error}") from error
        where = str(path) if spec.n_members == 1 else f"{path}: {file}"
        check_state_against_architecture(spec, {key: tuple(value.shape) for key, value in state.items()}, where)
        network = _empty_network(spec, str(path))
        network.load_state_dict(state, strict=True, assign=True)
        network.to(device=device, dtype=torch.float32)
        network.eval()
        networks.append(network)
    logger.info(
        "loaded module %s (%s, %d targets, %d of %d member networks) from %s",
        spec.name, spec.architecture, len(spec.targets), len(networks), spec.n_members, path,
    )
    return LoadedModule(spec, networks[0], path, networks)


# describing --------------------------------------------------------------------------------------
def member_count_line(spec: ModuleSpec) -> str:
    """'module body: 5 member networks (an ensemble)' or '... 1 member network'."""
    if spec.n_members == 1:
        return f"module {spec.name}: 1 member network"
    return f"module {spec.name}: {spec.n_members} member networks (an ensemble; its sd is the total of aleatoric and epistemic)"


_SHOWN_METRICS = ("n", "icc", "r2", "mae", "bias", "mape_percent", "auc", "auce_scaled")


def _format_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if float(value).is_integer() and abs(value) < 1e7:
        return str(int(value))
    return f"{value:.4g}"


def describe_module(path: Path | str) -> str:
    """A readable summary of module.json plus the state of the weights (for `mimir module info`)."""
    return inspect_module(path)[0]


def inspect_module(path: Path | str) -> tuple[str, bool]:
    """`describe_module`'s text, and whether the weights passed their checks."""
    path = Path(path)
    spec = read_spec(path)
    try:
        _checked_member_weights(path, spec)
        checked = "checksum and final layer" if spec.n_members == 1 else f"checksums and final layers of all {spec.n_members} members"
        weights_state, weights_ok = f"OK ({checked} match module.json)", True
    except ModuleFormatError as error:
        weights_state, weights_ok = f"FAILED: {type(error).__name__}: {error}", False
    representation_note = "" if spec.representation_version == REPRESENTATION_VERSION else (
        f"  (this MIMIR produces {REPRESENTATION_VERSION}: not usable as is)"
    )
    provenance = spec.provenance
    lines = [
        f"module {spec.name}  ({FORMAT_NAME} format {spec.format_version})",
        f"  source: {provenance.source}, written by mimir {provenance.mimir_version} on {provenance.created}",
        f"  architecture: {spec.architecture}, input pool {spec.input_pool}, "
        f"input {spec.representation_version} {tuple(spec.image_shape)} uint8{representation_note}",
        f"  log-variance clamp: {'none' if spec.log_var_range is None else list(spec.log_var_range)}",
        f"  member networks: {spec.n_members}" + ("" if spec.n_members == 1 else " (an ensemble: mixture mean, total, aleatoric and epistemic sd)"),
    ]
    if spec.n_members == 1:
        lines.append(f"  weights: {WEIGHTS_FILE}, {spec.weights_bytes / 1e6:.1f} MB, sha256 {spec.weights_sha256[:16]}...: {weights_state}")
    else:
        lines += [
            f"    {member.file}: {member.bytes / 1e6:.1f} MB, sha256 {member.sha256[:16]}..., from {member.source or '-'}"
            for member in spec.members
        ]
        lines.append(f"  weights: {weights_state}")
    if spec.ood is not None:
        from mimir.inference.ood import describe_summary

        try:
            _checked_ood_bytes(path, spec)
            ood_state = "OK"
        except ModuleFormatError as error:
            ood_state, weights_ok = f"FAILED: {type(error).__name__}: {error}", False
        lines.append(f"  OOD description: {OOD_FILE}, {describe_summary(spec.ood)}: {ood_state}")
    else:
        lines.append("  OOD description: none (no out-of-distribution flag)")
    lines += [f"  note: {note}" for note in provenance.notes]
    metric_names = [name for name in _SHOWN_METRICS if any(name in t.cv_metrics for t in spec.targets)]
    header = f"  {'target':<34}{'unit':<11}{'field':>7}{'calib.':>9}{'sd p99':>10}" + "".join(
        f"{'cv ' + name:>12}" for name in metric_names
    )
    lines += ["", f"  {len(spec.targets)} targets:", header]
    for target in spec.targets:
        name = target.name if target.in_catalog else f"{target.name} (not in catalog)"
        row = (
            f"  {name:<34}{target.unit:<11}{target.ukb_field if target.ukb_field is not None else '-':>7}"
            f"{target.calibration:>9.3f}{_format_value(target.sd_p99):>10}"
        )
        row += "".join(f"{_format_value(target.cv_metrics.get(metric)):>12}" for metric in metric_names)
        lines.append(row)
    if not metric_names:
        lines.append("  (no cross-validation metrics recorded)")
    return "\n".join(lines), weights_ok
