"""Which DICOM series of an exam are the Dixon water and fat images, and what was found when none are.

Decided from header values alone, in this order for each file:

1. patterns the user gives (`SeriesPatterns`: regular expressions on SeriesDescription), for
   the contrast they name;
2. UK Biobank's series descriptions, whose last `_`-separated part is `W` or `F`
   (`Dixon_BH_17s_W`); Siemens names its Dixon reconstructions so;
3. ImageType (0008,0008): a value `WATER` or `W` marks water, `FAT` or `F` fat, in whichever
   position the vendor writes it (Siemens `DERIVED\\PRIMARY\\DIXON\\WATER`, as in UK Biobank's
   files; Philips mDIXON style `...\\W\\W`; `WATER`/`FAT` anywhere else). In-phase, opposed-phase and
   fraction or relaxation maps (`IN_PHASE`, `OPP_PHASE`, `IP`, `OP`, `FAT_FRACTION`, `FF`,
   `T2_STAR`, ...) are never water or fat, even when they also carry one of those values.

UK Biobank exams are decided by step 2 exactly as before ImageType was read. When no pair is
found, `SeriesCensus` says what the exam held instead, for failures.csv.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mimir.errors import MimirError

WATER, FAT = "W", "F"
_NAMES = {WATER: "water", FAT: "fat"}
_IMAGE_TYPE_VALUES = {WATER: frozenset({"WATER", "W"}), FAT: frozenset({"FAT", "F"})}
#: ImageType values of Dixon images that are neither water nor fat; parts of a value
#: (`IN_PHASE`, `FAT_FRACTION`, `WATER_FRACTION`, `PHASE`) are matched as words.
_NOT_WATER_OR_FAT = frozenset({"IP", "OP", "IN", "OUT", "OPP", "FF", "WF", "PDFF", "T2STAR", "R2STAR", "STAR", "PHASE", "FRACTION", "MAP"})
_WORDS = re.compile(r"[^A-Z0-9]+")
#: Series groups listed by name in a reason; the rest are counted.
_LISTED_GROUPS = 6
#: Series numbers listed for one group of series that share a description and ImageType.
_LISTED_NUMBERS = 4
_HINT = (
    "MIMIR takes water and fat from UK Biobank descriptions ending _W/_F or from ImageType "
    "WATER/FAT (or W/F); name them with a water and a fat pattern "
    "(--water-pattern/--fat-pattern: regular expressions searched in SeriesDescription)"
)


class SeriesPatternError(MimirError, ValueError):
    """A water or fat pattern that is not a usable regular expression."""


@dataclass(frozen=True)
class SeriesPatterns:
    """Regular expressions (`re.search`, case-sensitive: add `(?i)` to ignore case) on
    SeriesDescription naming the water and the fat series, for exams that neither UK
    Biobank's descriptions nor ImageType mark. A pattern given decides its contrast alone;
    None leaves it to the built-in rules. Strings, so options holding them pickle for workers."""

    water_pattern: str | None = None
    fat_pattern: str | None = None

    def __post_init__(self) -> None:
        for contrast, pattern in ((WATER, self.water_pattern), (FAT, self.fat_pattern)):
            if pattern is None:
                continue
            if not pattern:
                raise SeriesPatternError(f"the {_NAMES[contrast]} pattern is empty: it would match every series")
            try:
                re.compile(pattern)
            except re.error as error:
                raise SeriesPatternError(f"the {_NAMES[contrast]} pattern {pattern!r} is not a regular expression ({error})") from None

    def pattern(self, contrast: str) -> str | None:
        return self.water_pattern if contrast == WATER else self.fat_pattern


def both_reason(patterns: SeriesPatterns) -> str:
    """Why a file taken as both water and fat was: the rule of each contrast that marked it."""
    rules = [
        f"the {_NAMES[c]} pattern {patterns.pattern(c)!r}" if patterns.pattern(c) is not None else f"the built-in {_NAMES[c]} rules"
        for c in (WATER, FAT)
    ]
    return f"is marked as both water and fat (by {rules[0]} and {rules[1]}); make the patterns exclusive"


def contrast_of(description: str) -> str | None:
    """'W' or 'F' for UK Biobank water and fat series descriptions (e.g. Dixon_BH_17s_W); None otherwise."""
    suffix = description.strip().rsplit("_", 1)[-1].upper() if "_" in description else ""
    return suffix if suffix in (WATER, FAT) else None


def contrast_of_image_type(image_type: Sequence[str]) -> str | None:
    """'W' or 'F' from ImageType values (any position); None for anything else or both."""
    values = {value.strip().upper() for value in image_type}
    found = [contrast for contrast, marks in _IMAGE_TYPE_VALUES.items() if values & marks]
    if len(found) != 1 or any(word in _NOT_WATER_OR_FAT for value in values for word in _WORDS.split(value)):
        return None
    return found[0]


def classify(values: Mapping[str, object], patterns: SeriesPatterns) -> str | None:
    """'W', 'F' or None for one file's header values; a description both patterns match is
    ambiguous and returned as 'W' and 'F' together ('WF') for the caller to refuse."""
    description = str(values.get("SeriesDescription", ""))
    built_in = contrast_of(description) or contrast_of_image_type(image_type_of(values))
    found = ""
    for contrast in (WATER, FAT):
        pattern = patterns.pattern(contrast)
        if (re.search(pattern, description) is not None) if pattern is not None else built_in == contrast:
            found += contrast
    return found or None


def image_type_of(values: Mapping[str, object]) -> tuple[str, ...]:
    image_type = values.get("ImageType", ())
    return tuple(image_type) if isinstance(image_type, (tuple, list)) else (str(image_type),)


def series_key(values: Mapping[str, object]) -> str:
    """What tells a file's series from others: SeriesInstanceUID, else number and description."""
    return str(values.get("SeriesInstanceUID", "")) or f"{values.get('SeriesNumber', 0)}|{values.get('SeriesDescription', '')}"


@dataclass
class _SeriesSeen:
    number: int
    description: str
    image_type: tuple[str, ...]
    contrast: str | None
    images: int = 0


@dataclass
class SeriesCensus:
    """Every DICOM image series of an exam (not only water and fat), for the reason of a refusal.

    Kept per series and ImageType: some scanners store all Dixon contrasts in one series.
    """

    series: dict[tuple[str, tuple[str, ...]], _SeriesSeen] = field(default_factory=dict)
    images: int = 0

    def add(self, values: Mapping[str, object], contrast: str | None) -> None:
        key = (series_key(values), image_type_of(values) if "ImageType" in values else ())
        seen = self.series.get(key)
        if seen is None:
            number = values.get("SeriesNumber", 0)
            seen = _SeriesSeen(
                number=int(number) if isinstance(number, int) else 0,
                description=str(values.get("SeriesDescription", "")),
                image_type=key[1],
                contrast=contrast,
            )
            self.series[key] = seen
        seen.images += 1
        self.images += 1

    def missing_reason(self, missing: Sequence[str], other_files: int, patterns: SeriesPatterns) -> str:
        """One line: which contrasts are missing, what the exam holds, and how to name them."""
        what = " or ".join(_NAMES[contrast] for contrast in missing)
        others = f" (and {_counted(other_files, 'other or unreadable file')})" if other_files else ""
        held = f"{_counted(self.images, 'DICOM image')}{others} in {len({key for key, _ in self.series})} series"
        unmatched = [contrast for contrast in missing if patterns.pattern(contrast) is not None]
        hint = (
            "; ".join(f"no SeriesDescription matches the {_NAMES[c]} pattern {patterns.pattern(c)!r}" for c in unmatched)
            if unmatched
            else _HINT
        )
        return f"no {what} series identified among {held}: {self._summary()}. {hint}"

    def _summary(self) -> str:
        """The series grouped by description, ImageType and role, the first few groups named."""
        groups: dict[tuple[str, tuple[str, ...], str | None], list[_SeriesSeen]] = {}
        for seen in sorted(self.series.values(), key=lambda s: s.number):
            groups.setdefault((seen.description, seen.image_type, seen.contrast), []).append(seen)
        parts = [_describe_group(members) for members in list(groups.values())[:_LISTED_GROUPS]]
        rest = list(groups.values())[_LISTED_GROUPS:]
        if rest:
            parts.append(f"{sum(len(members) for members in rest)} more series")
        return "; ".join(parts)


def _describe_group(members: list[_SeriesSeen]) -> str:
    first = members[0]
    numbers = ", ".join(f"#{seen.number}" for seen in members[:_LISTED_NUMBERS])
    if len(members) > _LISTED_NUMBERS:
        numbers += f" ... ({len(members)} series)"
    image_type = "ImageType " + ("\\".join(first.image_type) if first.image_type else "none")
    details = f"{image_type}, taken as {_NAMES[first.contrast]}" if first.contrast in _NAMES else image_type
    name = f"{first.description!r} ({details})" if first.description else f"(no SeriesDescription, {details})"
    return f"{numbers} {name}: {_counted(sum(seen.images for seen in members), 'image')}"


def _counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
