"""One self-contained HTML page per evaluation: a file that can be mailed, archived or opened offline.

Images travel inside the page as base64 data URIs and the style sheet is inline, so the page
never loads anything from elsewhere. Every piece of text is escaped.

The page scales to the 72 targets of the catalog: a header with the MIMIR version, date and
module provenance, a table of contents, the summary table, sections of their own (training
curves, ridge baseline), then one section per module with each target's figures in a grid
that puts several side by side (CSS only, no script).
"""

from __future__ import annotations

import base64
import logging
import math
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mimir.atomic import atomic_write_text
from mimir.report import MISSING, MODULE_TITLES, format_count, format_decimals, format_significant
from mimir.report.provenance import ModuleProvenance, report_stamp
from mimir.runs.layout import EvaluationFolder

if TYPE_CHECKING:
    import pandas as pd

    from mimir.targets.catalog import Target

logger = logging.getLogger(__name__)

_Item = TypeVar("_Item")

_IMAGE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".svg": "image/svg+xml",
}

#: Accepted spellings of summary-table columns (lower case) -> the key used here.
_COLUMN_ALIASES = {
    "name": "name", "target": "name",
    "module": "module",
    "field": "field", "ukb_field": "field",
    "n": "n",
    "unit": "unit",
    "icc": "icc",
    "r2": "r2", "r^2": "r2", "r\u00b2": "r2",
    "mae": "mae",
    "mape": "mape", "mape_percent": "mape", "mape_%": "mape", "mape (%)": "mape",
    "auc": "auc", "auc_roc": "auc",
    "cv_n": "cv_n", "cv_icc": "cv_icc", "cv_r2": "cv_r2", "cv_mae": "cv_mae", "cv_mape_percent": "cv_mape_percent",
}

#: Metric key -> (column heading, published catalog column, True when lower is better).
_COMPARED_METRICS = {
    "n": ("N", "cv_n", None),
    "icc": ("ICC", "cv_icc", False),
    "r2": ("R\u00b2", "cv_r2", False),
    "mae": ("MAE", "cv_mae", True),
    "mape": ("MAPE", "cv_mape_percent", True),
}

_METRIC_TITLES = {
    "n": "N", "icc": "ICC", "r2": "R\u00b2", "mae": "MAE", "bias": "Bias", "mape": "MAPE", "mape_percent": "MAPE",
    "auc": "AUC", "auce": "AUCE", "auce_before": "AUCE before calibration",
    "auce_after": "AUCE after calibration", "auce_scaled": "AUCE after calibration",
    "variance_scale": "Variance scale factor", "variance_factor": "Variance scale factor",
    "precision": "Precision", "recall": "Recall",
}

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       margin: 0 auto; max-width: 1500px; padding: 16px 24px; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.1em; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 2px solid #1f5fa8; padding-bottom: 4px; }
h3 { font-size: 1.05em; margin: 1.2em 0 0.3em; }
p.stamp { color: #555; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.6em 0 1em; }
th, td { padding: 3px 9px; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #eef3f9; }
th.group { text-align: center; border-bottom: 1px solid #9bb7d4; }
td.published { color: #555; background: #fafafa; }
td.worse { background: #fbe3e0; }
tr.module td { background: #f2f2f2; font-weight: 600; }
table.facts th { background: none; font-weight: 600; padding-right: 18px; }
table.facts td { white-space: pre-wrap; word-break: break-word; }
table.metrics { margin: 0.2em 0 0.5em; display: block; overflow-x: auto; }
table.metrics th, table.metrics td { white-space: nowrap; }
.caption { color: #555; font-size: 0.85em; }
nav ol { padding-left: 1.4em; }
nav ul.targets { columns: 4 14em; font-size: 0.88em; padding-left: 1.2em; margin: 0.2em 0 0.6em; }
a { color: #1f5fa8; text-decoration: none; }
a.top { font-size: 0.7em; font-weight: normal; margin-left: 0.8em; }
.grid { display: grid; grid-template-columns: minmax(0, 1fr); gap: 10px; align-items: start; }
.grid figure { margin: 0; }
.grid img { display: block; width: 100%; height: auto; border: 1px solid #eee; }
@media (min-width: 720px) {
  .grid { grid-template-columns: repeat(2, minmax(0, 1fr)); }
  .grid figure.wide { grid-column: span 2; }
}
@media (min-width: 1100px) { .grid { grid-template-columns: repeat(4, minmax(0, 1fr)); } }
"""

#: A figure at least this much wider than tall takes two grid columns.
_WIDE_ASPECT = 1.5
#: Module heading of targets that are neither given a module nor in the catalog.
_NO_MODULE = "other"


@dataclass
class ReportSection:
    """One target's part of the report: its figures and its own numbers, under its module.

    `module` is the module whose section the target goes into; empty means the catalog's.
    """

    target: str
    title: str
    figures: list[Path] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    module: str = ""


@dataclass(frozen=True)
class Cell:
    """One cell of a `Table`: text (escaped when written), right-aligned when numeric."""

    text: str
    numeric: bool = False
    worse: bool = False


@dataclass
class Table:
    """A small table for a `PageSection`: column headings and rows of cells."""

    columns: list[str]
    rows: list[list[Cell]]


@dataclass
class PageSection:
    """A section of its own between the summary and the modules, listed in the contents.

    The training curves and the ridge baseline are ones; a command that has more to show (a
    cohort map) adds another without touching the page layout. Text is escaped when written.
    """

    anchor: str
    title: str
    text: str = ""
    table: Table | None = None
    figures: list[Path] = field(default_factory=list)


def write_report(
    out_dir: Path,
    *,
    title: str,
    summary_table: "pd.DataFrame",
    sections: list[ReportSection],
    notes: dict[str, str] | None = None,
    page_sections: Sequence[PageSection] = (),
    modules: Sequence[ModuleProvenance] = (),
    ours_heading: str = "This evaluation",
) -> Path:
    """Write `out_dir/report.html` atomically and return its path.

    `summary_table` holds one row per target with at least a name column (`name` or
    `target`) and any of module, field, N, unit, ICC, R2, MAE, MAPE, AUC (case-insensitive; the
    evaluation module's `mape_percent` is accepted; a metric that is absent or NaN shows as a
    dash). Published cross-validation values come from `cv_*` columns when present, otherwise
    from the target catalog. `ours_heading` heads our columns of the summary ("This
    evaluation", "This cross-validation"). The page starts with the MIMIR version, the date and
    the provenance of `modules`; the targets follow in one section per module.
    """
    anchors = {section.target: _anchor("target", section.target) for section in sections}
    groups = _grouped(sections, lambda section: _module_of(section.target, section.module))
    body = [
        _header_html(title, notes or {}),
        _contents_html(page_sections, groups, anchors, bool(modules)),
        '<section id="summary"><h2>Summary</h2>',
        _summary_html(summary_table, anchors, ours_heading),
        "</section>",
    ]
    if modules:
        body.append(_modules_html(modules))
    body.extend(_page_section_html(section) for section in page_sections)
    body.extend(_module_section_html(module, members, anchors) for module, members in groups)
    page = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{escape(title)}</title>",
            f"<style>{_STYLE}</style>",
            "</head>",
            "<body>",
            *body,
            "</body>",
            "</html>",
            "",
        ]
    )
    path = EvaluationFolder(out_dir).report
    atomic_write_text(path, page)
    logger.info("wrote report %s (%d targets in %d module sections)", path, len(sections), len(groups))
    return path


def _anchor(kind: str, name: str) -> str:
    return f"{kind}-" + re.sub(r"[^A-Za-z0-9_-]", "-", name)


def _module_of(target: str, given: str) -> str:
    """The module a target is grouped under: as given, else the catalog's, else 'other'."""
    if given:
        return given
    entry = _catalog_entry(target)
    return entry.module if entry else _NO_MODULE


def _module_title(module: str) -> str:
    return MODULE_TITLES.get(module, module)


def _grouped(items: Iterable[_Item], module: Callable[[_Item], str]) -> list[tuple[str, list[_Item]]]:
    """Items by module, modules in order of first appearance: each heading appears once."""
    groups: dict[str, list[_Item]] = {}
    for item in items:
        groups.setdefault(module(item), []).append(item)
    return list(groups.items())


def _header_html(title: str, notes: dict[str, str]) -> str:
    stamp = report_stamp()
    line = " \u00b7 ".join(f"{key} {value}" for key, value in stamp.items())
    return f'<header><h1>{escape(title)}</h1><p class="stamp">{escape(line)}</p>{_facts_html(notes)}</header>'


def _facts_html(notes: dict[str, str]) -> str:
    if not notes:
        return ""
    rows = "".join(f"<tr><th>{escape(str(key))}</th><td>{escape(str(value))}</td></tr>" for key, value in notes.items())
    return f'<table class="facts">{rows}</table>'


def _contents_html(
    page_sections: Sequence[PageSection],
    groups: list[tuple[str, list[ReportSection]]],
    anchors: dict[str, str],
    with_modules: bool,
) -> str:
    items = ['<li><a href="#summary">Summary</a></li>']
    if with_modules:
        items.append('<li><a href="#modules">Modules</a></li>')
    items.extend(
        f'<li><a href="#{_anchor("section", section.anchor)}">{escape(section.title)}</a></li>'
        for section in page_sections
    )
    for module, members in groups:
        targets = "".join(
            f'<li><a href="#{anchors[section.target]}">{escape(section.title)}</a></li>' for section in members
        )
        items.append(
            f'<li><a href="#{_anchor("module", module)}">{escape(_module_title(module))}</a> '
            f'({len(members)})<ul class="targets">{targets}</ul></li>'
        )
    return f'<nav id="contents"><h2>Contents</h2><ol>{"".join(items)}</ol></nav>'


def _modules_html(modules: Sequence[ModuleProvenance]) -> str:
    columns = ("Module", "Source", "Format", "Written by", "Created", "Training", "Notes")
    head = "".join(f"<th>{escape(column)}</th>" for column in columns)
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{escape(text) or MISSING}</td>"
            for text in (module.name, module.source, module.format, module.written_by, module.created,
                         module.training, "; ".join(module.notes))
        )
        + "</tr>"
        for module in modules
    )
    return f'<section id="modules"><h2>Modules</h2><table class="modules"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></section>'


def _page_section_html(section: PageSection) -> str:
    parts = [f'<section id="{_anchor("section", section.anchor)}">', f"<h2>{escape(section.title)}</h2>"]
    if section.text:
        parts.append(f'<p class="caption">{escape(section.text)}</p>')
    if section.table is not None:
        parts.append(_table_html(section.table))
    if section.figures:
        parts.append(_grid_html(section.figures, section.title))
    parts.append("</section>")
    return "\n".join(parts)


def _table_html(table: Table) -> str:
    head = "".join(f"<th>{escape(column)}</th>" for column in table.columns)
    rows = "".join(
        "<tr>" + "".join(_cell_html(cell) for cell in row) + "</tr>" for row in table.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _cell_html(cell: Cell) -> str:
    classes = " ".join(name for name, wanted in (("num", cell.numeric), ("worse", cell.worse)) if wanted)
    attribute = f' class="{classes}"' if classes else ""
    return f"<td{attribute}>{escape(cell.text)}</td>"


def cell_number(value: Any) -> float:
    """A table cell as float; missing, pd.NA and non-numeric text become NaN (shown as a dash)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def _as_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value)
    return "" if text in {"nan", "<NA>", "None"} else text


def format_metric(key: str, value: Any) -> str:
    """A metric formatted like the paper: scores to 3 decimals, MAE to 3 significant digits."""
    number = cell_number(value)
    lowered = key.lower()
    if lowered in {"n", "cv_n", "test_n"} or lowered.endswith("_n"):
        return format_count(number)
    if "mape" in lowered:
        text = format_decimals(number, 1)
        return text if text == MISSING else f"{text} %"
    if lowered in {"icc", "r2", "auc", "precision", "recall"} or lowered.startswith(("auce", "cv_icc", "cv_r2")):
        return format_decimals(number, 3)
    return format_significant(number)


def _canonical_rows(summary_table: "pd.DataFrame") -> list[dict[str, Any]]:
    renames: dict[str, str] = {}
    for column in summary_table.columns:
        key = _COLUMN_ALIASES.get(str(column).strip().lower())
        if key is not None and key not in renames.values():
            renames[column] = key
    if "name" not in renames.values():
        raise ValueError(
            f"summary table needs a 'name' (or 'target') column; it has {list(summary_table.columns)}"
        )
    table = summary_table[list(renames)].rename(columns=renames)
    return table.to_dict(orient="records")


def _catalog_entry(name: str) -> "Target | None":
    from mimir.targets.catalog import get_target

    try:
        return get_target(name)
    except KeyError:
        return None


def _summary_html(summary_table: "pd.DataFrame", anchors: dict[str, str], ours_heading: str) -> str:
    rows = _canonical_rows(summary_table)
    show_auc = any(math.isfinite(cell_number(row.get("auc"))) for row in rows)
    ours = list(_COMPARED_METRICS) + (["auc"] if show_auc else [])
    head = (
        "<thead><tr>"
        '<th rowspan="2">Target</th><th rowspan="2">Field</th><th rowspan="2">Unit</th>'
        f'<th class="group" colspan="{len(ours)}">{escape(ours_heading)}</th>'
        f'<th class="group" colspan="{len(_COMPARED_METRICS)}">Published (10-fold cross-validation)</th>'
        "</tr><tr>"
        + "".join(f'<th class="num">{escape(_METRIC_TITLES[key])}</th>' for key in ours)
        + "".join(f'<th class="num">{escape(heading)}</th>' for heading, _, _ in _COMPARED_METRICS.values())
        + "</tr></thead>"
    )
    columns = 3 + len(ours) + len(_COMPARED_METRICS)
    body: list[str] = []
    for module, members in _grouped(rows, lambda row: _module_of(_as_text(row["name"]), _as_text(row.get("module")))):
        body.append(f'<tr class="module"><td colspan="{columns}">{escape(_module_title(module))}</td></tr>')
        for row in members:
            name = _as_text(row["name"])
            body.append(_summary_row(row, name, _catalog_entry(name), ours, anchors))
    caption = (
        '<p class="caption">Shaded cells are worse than the published value; the cohorts differ, '
        "so this is a pointer, not a test. ICC: two-way random, single measures, absolute agreement. "
        "MAE in the target's unit; a dash: not defined for the target or not measured.</p>"
    )
    return f"<table class=\"summary\">{head}<tbody>{''.join(body)}</tbody></table>{caption}"


def _summary_row(
    row: dict[str, Any], name: str, target: "Target | None", ours: list[str], anchors: dict[str, str]
) -> str:
    published = {key: cell_number(row.get(key)) for _, key, _ in _COMPARED_METRICS.values()}
    for key, value in (target.published if target else {}).items():
        if not math.isfinite(published.get(key, math.nan)):
            published[key] = value
    field_text = _as_text(row.get("field"))
    if field_text.endswith(".0"):
        field_text = field_text[:-2]
    if not field_text and target and target.ukb_field is not None:
        field_text = str(target.ukb_field)
    unit = _as_text(row.get("unit")) or (target.unit if target else "")
    label = escape(name)
    if name in anchors:
        label = f'<a href="#{anchors[name]}">{label}</a>'
    cells = [f"<td>{label}</td>", f"<td>{escape(field_text) or MISSING}</td>", f"<td>{escape(unit)}</td>"]
    for key in ours:
        value = cell_number(row.get(key))
        css = "num"
        if key in _COMPARED_METRICS:
            _, published_key, lower_is_better = _COMPARED_METRICS[key]
            if _is_worse(value, published.get(published_key, math.nan), lower_is_better):
                css += " worse"
        cells.append(f'<td class="{css}">{escape(format_metric(key, value))}</td>')
    for key, (_, published_key, _) in _COMPARED_METRICS.items():
        value = published.get(published_key, math.nan)
        cells.append(f'<td class="num published">{escape(format_metric(key, value))}</td>')
    return "<tr>" + "".join(cells) + "</tr>"


def _is_worse(ours: float, published: float, lower_is_better: bool | None) -> bool:
    if lower_is_better is None or not (math.isfinite(ours) and math.isfinite(published)):
        return False
    return ours > published if lower_is_better else ours < published


def _module_section_html(module: str, members: list[ReportSection], anchors: dict[str, str]) -> str:
    parts = [
        f'<section class="module" id="{_anchor("module", module)}">',
        f'<h2>{escape(_module_title(module))}<a class="top" href="#contents">contents \u2191</a></h2>',
    ]
    parts.extend(_target_html(section, anchors[section.target]) for section in members)
    parts.append("</section>")
    return "\n".join(parts)


def _target_html(section: ReportSection, anchor: str) -> str:
    parts = [f'<article class="target" id="{anchor}">', f"<h3>{escape(section.title)}</h3>"]
    if section.metrics:
        head = "".join(
            f'<th class="num">{escape(_METRIC_TITLES.get(key.lower(), key))}</th>' for key in section.metrics
        )
        cells = "".join(
            f'<td class="num">{escape(format_metric(key, value))}</td>' for key, value in section.metrics.items()
        )
        parts.append(f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody><tr>{cells}</tr></tbody></table>')
    if section.figures:
        parts.append(_grid_html(section.figures, section.title))
    parts.append("</article>")
    return "\n".join(parts)


def _grid_html(figures: Sequence[Path], context: str) -> str:
    """Figures side by side, as many per row as the window allows (see the style's .grid)."""
    return '<div class="grid">' + "".join(_figure_html(Path(figure), context) for figure in figures) + "</div>"


def _figure_html(path: Path, context: str) -> str:
    media_type = _IMAGE_TYPES.get(path.suffix.lower())
    if media_type is None:
        raise ValueError(f"cannot embed {path}: unsupported image type {path.suffix!r}")
    if not path.is_file():
        raise FileNotFoundError(f"report figure {path} does not exist")
    data = path.read_bytes()
    size = _png_size(data)
    wide = size is not None and size[0] >= _WIDE_ASPECT * size[1]
    dimensions = f' width="{size[0]}" height="{size[1]}"' if size else ""
    encoded = base64.b64encode(data).decode("ascii")
    alt = escape(f"{context}: {path.stem}", quote=True)
    css = ' class="wide"' if wide else ""
    return f'<figure{css}><img alt="{alt}"{dimensions} src="data:{media_type};base64,{encoded}"></figure>'


def _png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's header (None for other formats): the page reserves the
    space before the image decodes, and wide figures get two grid columns."""
    if len(data) < 24 or data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return (width, height) if width and height else None
