"""One self-contained HTML page per evaluation: a file that can be mailed, archived or opened offline.

Images travel inside the page as base64 data URIs and the style sheet is inline, so the page
never loads anything from elsewhere. Every piece of text is escaped.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mimir.atomic import atomic_write_text
from mimir.report import MISSING, MODULE_TITLES, format_count, format_decimals, format_significant
from mimir.runs.layout import EvaluationFolder

if TYPE_CHECKING:
    import pandas as pd

    from mimir.targets.catalog import Target

logger = logging.getLogger(__name__)

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
    "n": "N", "icc": "ICC", "r2": "R\u00b2", "mae": "MAE", "mape": "MAPE", "mape_percent": "MAPE",
    "auc": "AUC", "auce": "AUCE", "auce_before": "AUCE before calibration",
    "auce_after": "AUCE after calibration", "auce_scaled": "AUCE after calibration",
    "variance_scale": "Variance scale factor", "variance_factor": "Variance scale factor",
    "precision": "Precision", "recall": "Recall",
}

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       margin: 0 auto; max-width: 1180px; padding: 24px; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 2px solid #1f5fa8; padding-bottom: 4px; }
h3 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.6em 0 1em; }
th, td { padding: 3px 9px; border-bottom: 1px solid #ddd; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
thead th { background: #eef3f9; }
th.group { text-align: center; border-bottom: 1px solid #9bb7d4; }
td.published { color: #555; background: #fafafa; }
td.worse { background: #fbe3e0; }
tr.module td { background: #f2f2f2; font-weight: 600; }
table.facts th { background: none; font-weight: 600; padding-right: 18px; }
table.facts td { font-family: ui-monospace, Menlo, Consolas, monospace; white-space: pre-wrap;
                 word-break: break-word; }
.figures img { max-width: 100%; height: auto; margin: 6px 8px 6px 0; border: 1px solid #eee; }
.caption { color: #555; font-size: 0.85em; }
nav ul { columns: 3; font-size: 0.88em; }
a { color: #1f5fa8; text-decoration: none; }
"""


@dataclass
class ReportSection:
    """One target's part of the report: its figures and its own numbers."""

    target: str
    title: str
    figures: list[Path] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def write_report(
    out_dir: Path,
    *,
    title: str,
    summary_table: "pd.DataFrame",
    sections: list[ReportSection],
    notes: dict[str, str] | None = None,
) -> Path:
    """Write `out_dir/report.html` atomically and return its path.

    `summary_table` holds one row per target with at least a name column (`name` or
    `target`) and any of field, N, unit, ICC, R2, MAE, MAPE, AUC (case-insensitive; the
    evaluation module's `mape_percent` is accepted). Published cross-validation values come
    from `cv_*` columns when present, otherwise from the target catalog.
    """
    anchors = {section.target: _anchor(section.target) for section in sections}
    body = [
        f"<header><h1>{escape(title)}</h1>",
        _facts_html(notes or {}),
        "</header>",
        "<h2>Summary</h2>",
        _summary_html(summary_table, anchors),
    ]
    if sections:
        body.append(_contents_html(sections, anchors))
        body.extend(_section_html(section, anchors[section.target]) for section in sections)
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
    logger.info("wrote report %s (%d sections)", path, len(sections))
    return path


def _anchor(target: str) -> str:
    return "target-" + re.sub(r"[^A-Za-z0-9_-]", "-", target)


def _facts_html(notes: dict[str, str]) -> str:
    if not notes:
        return ""
    rows = "".join(f"<tr><th>{escape(str(key))}</th><td>{escape(str(value))}</td></tr>" for key, value in notes.items())
    return f'<table class="facts">{rows}</table>'


def _as_float(value: Any) -> float:
    """A table cell as float; missing, pd.NA and non-numeric text become NaN."""
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
    number = _as_float(value)
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


def _summary_html(summary_table: "pd.DataFrame", anchors: dict[str, str]) -> str:
    rows = _canonical_rows(summary_table)
    show_auc = any(math.isfinite(_as_float(row.get("auc"))) for row in rows)
    ours = list(_COMPARED_METRICS) + (["auc"] if show_auc else [])
    head = (
        "<thead><tr>"
        '<th rowspan="2">Target</th><th rowspan="2">Field</th><th rowspan="2">Unit</th>'
        f'<th class="group" colspan="{len(ours)}">This evaluation</th>'
        f'<th class="group" colspan="{len(_COMPARED_METRICS)}">Published (10-fold cross-validation)</th>'
        "</tr><tr>"
        + "".join(f'<th class="num">{escape(_METRIC_TITLES[key])}</th>' for key in ours)
        + "".join(f'<th class="num">{escape(heading)}</th>' for heading, _, _ in _COMPARED_METRICS.values())
        + "</tr></thead>"
    )
    body: list[str] = []
    current_module: str | None = None
    columns = 3 + len(ours) + len(_COMPARED_METRICS)
    for row in rows:
        name = _as_text(row["name"])
        target = _catalog_entry(name)
        module = _as_text(row.get("module")) or (target.module if target else "")
        if module and module != current_module:
            heading = MODULE_TITLES.get(module, module)
            body.append(f'<tr class="module"><td colspan="{columns}">{escape(heading)}</td></tr>')
            current_module = module
        body.append(_summary_row(row, name, target, ours, anchors))
    caption = (
        '<p class="caption">Shaded cells are worse than the published value; the cohorts differ, '
        "so this is a pointer, not a test. ICC: two-way random, single measures, absolute agreement. "
        "MAE in the target's unit.</p>"
    )
    return f"<table class=\"summary\">{head}<tbody>{''.join(body)}</tbody></table>{caption}"


def _summary_row(
    row: dict[str, Any], name: str, target: "Target | None", ours: list[str], anchors: dict[str, str]
) -> str:
    published = {key: _as_float(row.get(key)) for _, key, _ in _COMPARED_METRICS.values()}
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
        value = _as_float(row.get(key))
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


def _contents_html(sections: list[ReportSection], anchors: dict[str, str]) -> str:
    items = "".join(
        f'<li><a href="#{anchors[section.target]}">{escape(section.title)}</a></li>' for section in sections
    )
    return f"<nav><h2>Targets</h2><ul>{items}</ul></nav>"


def _section_html(section: ReportSection, anchor: str) -> str:
    parts = [f'<section id="{anchor}">', f"<h2>{escape(section.title)}</h2>"]
    if section.metrics:
        cells = "".join(
            f"<tr><th>{escape(_METRIC_TITLES.get(key.lower(), key))}</th>"
            f'<td class="num">{escape(format_metric(key, value))}</td></tr>'
            for key, value in section.metrics.items()
        )
        parts.append(f'<table class="metrics">{cells}</table>')
    if section.figures:
        images = "".join(_image_html(Path(figure), section.title) for figure in section.figures)
        parts.append(f'<div class="figures">{images}</div>')
    parts.append("</section>")
    return "\n".join(parts)


def _image_html(path: Path, context: str) -> str:
    media_type = _IMAGE_TYPES.get(path.suffix.lower())
    if media_type is None:
        raise ValueError(f"cannot embed {path}: unsupported image type {path.suffix!r}")
    if not path.is_file():
        raise FileNotFoundError(f"report figure {path} does not exist")
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = escape(f"{context}: {path.stem}", quote=True)
    return f'<img alt="{alt}" src="data:{media_type};base64,{encoded}">'
