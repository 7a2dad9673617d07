"""The report is one self-contained, escaped page with the paper's summary table."""

from __future__ import annotations

import base64
import math
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import mimir
from mimir.inference.modules import ModuleSpec, Provenance
from mimir.report.html import PageSection, ReportSection, format_metric, write_report
from mimir.report.provenance import from_module_spec


@pytest.fixture()
def figure_path(tmp_path):
    path = tmp_path / "figures" / "height.png"
    path.parent.mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(path, format="PNG")
    return path


def summary() -> pd.DataFrame:
    return pd.DataFrame([
        {"name": "height", "n": 2990, "unit": "cm", "icc": 0.96123, "r2": 0.93, "mae": 1.8234, "mape_percent": 1.0667},
        {"name": "sex", "n": 500, "icc": 0.99, "r2": 0.97, "mae": 0.0123, "mape_percent": np.nan, "auc": 0.9981},
        {"name": "notInCatalog<x>", "n": 3, "icc": math.nan, "r2": math.nan, "mae": 2.0, "mape_percent": 5.0},
    ])


def test_report_is_self_contained_and_formatted(tmp_path, figure_path):
    sections = [
        ReportSection("height", "height (cm)", [figure_path], {"icc": 0.96123, "mae": 1.8234}),
        ReportSection("sex", "sex", [], {"auc": 0.9981}),
    ]
    out = tmp_path / "out"
    path = write_report(out, title="Eval <A&B>", summary_table=summary(), sections=sections,
                        notes={"command": "mimir evaluate --flag <x>", "N subjects": "3,490"})
    assert path == out / "report.html"
    page = path.read_text(encoding="utf-8")
    assert [entry.name for entry in out.iterdir()] == ["report.html"]

    assert "<title>Eval &lt;A&amp;B&gt;</title>" in page and "<A&B>" not in page
    assert "mimir evaluate --flag &lt;x&gt;" in page
    assert "notInCatalog&lt;x&gt;" in page
    for name in ("height", "sex"):
        assert f'id="target-{name}"' in page

    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(link.startswith(("data:", "#")) for link in links)
    assert "http" not in page.lower()
    assert "<script" not in page.lower() and "<link" not in page.lower()
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 1
    assert base64.b64decode(images[0]) == figure_path.read_bytes()

    # ICC/R2 3 decimals, MAE 3 significant digits, MAPE 1 decimal %, N with separators.
    for text in ("0.961", "1.82", "1.1 %", "2,990", "0.0123", "0.998"):
        assert f">{text}<" in page
    # Published cross-validation values come from the catalog (height: N 38,874, MAE 1.794).
    assert ">38,874<" in page and ">1.79<" in page
    # Ours (ICC 0.961) is worse than published (0.965); MAPE 1.07 is not worse than 1.1.
    assert '<td class="num worse">0.961</td>' in page
    assert '<td class="num">1.1 %</td>' in page


def test_report_accepts_paper_style_columns(tmp_path):
    table = pd.DataFrame([{"Target": "age", "Field": 21003.0, "N": 10, "Unit": "years", "ICC": 0.9,
                           "R2": 0.8, "MAE": 2.61234, "MAPE": 4.04}])
    page = write_report(tmp_path, title="t", summary_table=table, sections=[]).read_text()
    assert ">21003<" in page and ">2.61<" in page and ">4.0 %<" in page and ">0.900<" in page


def test_report_errors(tmp_path):
    with pytest.raises(ValueError, match="name"):
        write_report(tmp_path, title="t", summary_table=pd.DataFrame({"icc": [1.0]}), sections=[])
    missing = [ReportSection("height", "height", [tmp_path / "absent.png"], {})]
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path, title="t", summary_table=summary(), sections=missing)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [("icc", 0.96549, "0.965"), ("R2", 0.5, "0.500"), ("mae", 1234.5, "1230"), ("mape_percent", 12.34, "12.3 %"),
     ("n", 38874, "38,874"), ("auce_after", 0.01234, "0.012"), ("mae", None, "\u2013"), ("icc", pd.NA, "\u2013")],
)
def test_format_metric(key, value, text):
    assert format_metric(key, value) == text


def test_report_takes_published_values_from_the_table_first(tmp_path):
    table = pd.DataFrame([
        {"name": "custom", "module": "extra", "ukb_field": np.nan, "unit": "mm", "kind": "continuous", "n": 4,
         "icc": 0.5, "r2": 0.4, "mae": 3.0, "mape_percent": 2.0, "auc": np.nan, "auce": 0.05,
         "variance_factor": 1.7, "cv_n": 77, "cv_icc": 0.7, "cv_r2": 0.6, "cv_mae": 2.5, "cv_mape_percent": 1.5},
        {"name": "height", "module": "experimental", "ukb_field": 12144.0, "unit": "cm", "n": 4, "icc": 0.99,
         "r2": 0.95, "mae": 1.0, "mape_percent": 0.5, "cv_n": np.nan},
    ])
    page = write_report(tmp_path, title="t", summary_table=table, sections=[]).read_text()
    assert '<td class="num published">77</td>' in page
    assert '<td class="num worse">3.00</td>' in page
    assert ">12144<" in page and ">38,874<" in page
    assert "Anthropometry and experimental" in page and ">extra<" in page


def _png(path, width, height):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 180, dtype=np.uint8)).save(path, format="PNG")
    return path


def test_each_module_heading_appears_once_and_holds_its_targets(tmp_path):
    """Rows of one module need not be adjacent (waist after age): the heading is not repeated."""
    table = pd.DataFrame([{"name": name, "n": 5, "mae": 1.0} for name in ("weight", "age", "waist")])
    sections = [ReportSection(name, name, [_png(tmp_path / "f" / f"{name}.png", 20, 10)], {"mae": 1.0})
                for name in ("weight", "age", "waist")]
    page = write_report(tmp_path / "out", title="t", summary_table=table, sections=sections).read_text()
    summary = re.search(r'<table class="summary">.*?</table>', page, re.DOTALL).group(0)
    assert summary.count("Anthropometry and experimental") == 1 and summary.count(">Age<") == 1
    assert re.findall(r'<a href="#target-(\w+)">', summary) == ["weight", "waist", "age"]
    modules = re.findall(r'<section class="module" id="module-(\w+)">(.*?)</section>', page, re.DOTALL)
    assert [(module, re.findall(r'<article class="target" id="target-(\w+)"', body)) for module, body in modules] == [
        ("experimental", ["weight", "waist"]), ("age", ["age"])]


def test_contents_link_every_section_and_every_link_has_its_anchor(tmp_path, figure_path):
    sections = [ReportSection("height", "height (cm)", [figure_path], {"mae": 1.8}),
                ReportSection("custom<1>", "custom", [], {}, module="extra")]
    extra = PageSection("cohort map", "Cohort <map>", text="points & colours", figures=[figure_path])
    page = write_report(tmp_path / "out", title="t", summary_table=summary(), sections=sections,
                        page_sections=[extra]).read_text()
    contents = re.search(r'<nav id="contents">.*?</nav>', page, re.DOTALL).group(0)
    links = re.findall(r'href="#([^"]+)"', contents)
    assert links == ["summary", "section-cohort-map", "module-experimental", "target-height", "module-extra",
                     "target-custom-1-"]
    ids = set(re.findall(r'id="([^"]+)"', page))
    assert set(re.findall(r'href="#([^"]+)"', page)) <= ids
    assert "Cohort &lt;map&gt;" in page and "points &amp; colours" in page


def test_figures_sit_in_a_grid_wide_ones_over_two_columns(tmp_path):
    wide, square = _png(tmp_path / "f" / "wide.png", 300, 120), _png(tmp_path / "f" / "square.png", 120, 120)
    section = ReportSection("height", "height (cm)", [wide, square, square], {})
    page = write_report(tmp_path / "out", title="t", summary_table=summary(), sections=[section]).read_text()
    grid = re.search(r'<div class="grid">(.*?)</div>', page, re.DOTALL).group(1)
    figures = re.findall(r'<figure( class="wide")?><img alt="[^"]*" width="(\d+)" height="(\d+)" src="data:', grid)
    assert figures == [(' class="wide"', "300", "120"), ("", "120", "120"), ("", "120", "120")]
    assert "grid-template-columns: repeat(4, minmax(0, 1fr))" in page and "grid-column: span 2" in page


def test_header_names_the_mimir_version_date_and_each_modules_provenance(tmp_path):
    spec = ModuleSpec(
        name="organs<1>", architecture="resnet50", targets=(),
        provenance=Provenance(source="legacy", mimir_version="0.0.7", created="2026-01-02T03:04:05+00:00",
                              config={"published_folder": "organs_release"}, data={"snapshot_sha256": "ab" * 32},
                              notes=("variance divided by 4",)),
    )
    page = write_report(tmp_path, title="t", summary_table=summary(), sections=[],
                        modules=[from_module_spec(spec)]).read_text()
    stamp = re.search(r'<p class="stamp">([^<]*)</p>', page).group(1)
    assert re.fullmatch(rf"MIMIR version {re.escape(mimir.__version__)} \u00b7 created \d{{4}}-\d\d-\d\d \d\d:\d\d UTC", stamp)
    row = re.search(r'<section id="modules">.*?<tbody><tr>(.*?)</tr>', page, re.DOTALL).group(1)
    assert re.findall(r"<td>([^<]*)</td>", row) == [
        "organs&lt;1&gt;", "legacy", "mimir-module 1", "mimir 0.0.7", "2026-01-02T03:04:05+00:00",
        "converted from the published weights in organs_release; snapshot sha256 " + "ab" * 8 + "\u2026",
        "variance divided by 4",
    ]
    assert '<a href="#modules">Modules</a>' in page


def test_metrics_missing_for_a_target_show_as_dashes(tmp_path):
    """A binary target reports no MAPE (absent column or NaN): the cell is a dash, not an error."""
    table = pd.DataFrame([{"name": "sex", "n": 40, "auc": 0.97}, {"name": "height", "n": 40, "mae": 2.0}])
    page = write_report(tmp_path, title="t", summary_table=table, sections=[], ours_heading="Ours").read_text()
    sex = re.search(r"<tr><td>sex</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r">([^<]*)</td>", sex)
    assert cells[2:8] == ["40", "\u2013", "\u2013", "\u2013", "\u2013", "0.970"]
    assert ">Ours<" in page
