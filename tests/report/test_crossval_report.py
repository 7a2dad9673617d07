"""The cross-validation report, on a merged folder of synthetic folds (no training needed)."""

import base64
import json
import re

import pandas as pd

from mimir.learn.crossval import merge_crossval
from mimir.report import format_significant
from mimir.report.crossval_report import write_crossval_report
from mimir.report.html import PageSection


def test_report_is_one_self_contained_page_with_all_figures(merged_folder):
    path = write_crossval_report(merged_folder)
    assert path == merged_folder / "report.html"
    page = path.read_text(encoding="utf-8")
    links = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert links and all(link.startswith(("data:", "#")) for link in links)
    text = re.sub(r"base64,[A-Za-z0-9+/=]+", "", page).lower()
    assert "http" not in text and "<script" not in text and "<link" not in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # validation curve, then agreement + calibration + sparsification of height, agreement + sparsification of sex
    assert len(images) == 1 + 3 + 2
    assert base64.b64decode(images[0]) == (merged_folder / "figures" / "validation_curve.png").read_bytes()
    for name in ("height", "sex"):
        assert f'id="target-{name}"' in page and f'href="#target-{name}"' in page
        for kind in ("agreement", "sparsification"):
            assert (merged_folder / "figures" / f"{name}_{kind}.png").is_file()
    assert "mine &lt;&amp;&gt;" in page and "<&>" not in page
    assert "Ridge baseline MAE" in page
    assert "AUCE after calibration" in page and "mean(z^2)" in page


def test_binary_target_has_no_calibration_plot(merged_folder):
    """Sex is binary in the catalog: the coverage of Gaussian intervals is not drawn for it."""
    write_crossval_report(merged_folder)
    figures = {path.name for path in (merged_folder / "figures").iterdir()}
    assert "height_calibration.png" in figures
    assert "sex_calibration.png" not in figures and "sex_agreement.png" in figures


def test_report_is_headed_as_a_cross_validation_with_provenance(merged_folder):
    record_path = merged_folder / "crossval.json"
    record = json.loads(record_path.read_text())
    record["config"] = {"architecture": "resnet18", "init": "imagenet", "iterations": 6000, "batch_size": 32,
                        "learning_rate": 0.0001}
    record["sessions"] = [{"started": "2026-11-30T08:00:00+00:00", "software": {"mimir": "0.0.9"}}]
    record_path.write_text(json.dumps(record))
    (merged_folder / "data_summary.json").write_text(json.dumps({"n_subjects": 30, "n_exams": 31}))
    page = write_crossval_report(merged_folder).read_text(encoding="utf-8")
    assert "This cross-validation (2-fold)" in page and "This evaluation" not in page
    assert re.search(r"MIMIR version \d+\.\d+\.\d+ \u00b7 created \d{4}-\d\d-\d\d \d\d:\d\d UTC", page)
    modules = re.search(r'<section id="modules">.*?</section>', page, re.DOTALL).group(0)
    assert "mine &lt;&amp;&gt;" in modules and "cross-validation (this folder)" in modules
    assert "resnet18 (init imagenet), 6000 iterations, batch 32, learning rate 0.0001; 2-fold cross-validation; " \
        "30 subjects / 31 exams" in modules
    assert "mimir 0.0.9" in modules and "2026-11-30T08:00:00+00:00" in modules


def test_ridge_baseline_is_a_table_beside_the_network(merged_folder):
    cohort_map = PageSection("cohort-map", "Cohort map", text="one dot per subject")
    page = write_crossval_report(merged_folder, extra_sections=[cohort_map]).read_text(encoding="utf-8")
    section = re.search(r'<section id="section-ridge-baseline">.*?</section>', page, re.DOTALL).group(0)
    headings = re.findall(r"<th>([^<]*)</th>", section)
    assert headings == ["Target", "MAE network", "MAE ridge", "ICC network", "ICC ridge", "R\u00b2 network", "R\u00b2 ridge"]
    rows = re.findall(r"<tr><td>(height|sex)</td>((?:<td[^>]*>[^<]*</td>){6})</tr>", section)
    assert [name for name, _ in rows] == ["height", "sex"]
    summary = pd.read_csv(merged_folder / "summary.csv").set_index("name")
    height_cells = re.findall(r">([^<]*)</td>", rows[0][1])
    assert height_cells[1] == format_significant(summary.loc["height", "baseline_mae"])
    assert "<pre" not in page and "monospace" not in page
    assert '<a href="#section-ridge-baseline">Ridge baseline</a>' in page
    order = [page.index(f'<section id="section-{name}">') for name in ("validation-curve", "ridge-baseline", "cohort-map")]
    assert order == sorted(order) and order[-1] < page.index('<section class="module"')
    assert '<a href="#section-cohort-map">Cohort map</a>' in page


def test_partial_merge_is_flagged_in_the_report(merged_folder):
    (merged_folder / "fold_1" / "fold.json").unlink()
    merge_crossval(merged_folder, allow_partial=True)
    page = write_crossval_report(merged_folder).read_text(encoding="utf-8")
    assert "PARTIAL" in page and "folds [1] are missing" in page


def test_cohort_maps_section_embeds_the_figure_with_exams_and_method_per_target(merged_folder, cohort_figure):
    from mimir.report.crossval_report import cohort_maps_section

    figure = cohort_figure
    section = cohort_maps_section(figure, method="guided-gradcam", exams={"height": 12, "sex": 11}, folds=[0, 1],
                                  aligned=False)
    html = write_crossval_report(merged_folder, extra_sections=[section]).read_text(encoding="utf-8")
    part = html[html.index('<section id="section-cohort-maps">'):]
    part = part[: part.index("</section>")]
    assert "Cohort saliency maps (guided-gradcam)" in part and "folds 0, 1" in part
    assert "body outline" not in part  # not aligned: the text does not claim it
    assert '<td>height</td><td class="num">12</td><td>guided-gradcam</td>' in part
    assert '<td>sex</td><td class="num">11</td><td>guided-gradcam</td>' in part
    (encoded,) = re.findall(r'src="data:image/png;base64,([^"]+)"', part)
    assert base64.b64decode(encoded) == figure.read_bytes()
    assert html.index('id="section-ridge-baseline"') < html.index('id="section-cohort-maps"') < html.index('id="module-')
