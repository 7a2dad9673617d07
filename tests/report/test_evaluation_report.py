"""`mimir evaluate` writes the metrics and the evaluation report (or only the metrics)."""

import re

import pandas as pd

from mimir.cli import main


def test_evaluate_writes_metrics_and_a_self_contained_report(tmp_path, evaluation_tables, capsys):
    predictions, reference = evaluation_tables
    out = tmp_path / "eval"
    assert main(["evaluate", str(predictions), str(reference), "--out", str(out)]) == 0
    metrics = pd.read_csv(out / "metrics.csv").set_index("name")
    assert metrics.loc["weight", "n"] == 59
    assert metrics.loc["weight", "icc"] > 0.95
    assert metrics.loc["sex", "auc"] > 0.9
    html = (out / "report.html").read_text()
    assert "weight" in html and "sex" in html
    assert "src=\"http" not in html and html.count("data:image/png;base64,") >= 5
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "weight_calibration.png" in figures and "weight_agreement.png" in figures
    assert "sex_agreement.png" in figures and "sex_calibration.png" not in figures, "sex is binary in the catalog"
    assert "<th>modules</th><td>not recorded with the predictions table</td>" in html
    assert '<section class="module" id="module-experimental">' in html
    assert "report:" in capsys.readouterr().out


def test_evaluate_without_report(tmp_path, evaluation_tables):
    predictions, reference = evaluation_tables
    out = tmp_path / "eval"
    assert main(["evaluate", str(predictions), str(reference), "--out", str(out), "--no-report"]) == 0
    assert (out / "metrics.csv").is_file()
    assert not (out / "report.html").exists()


def test_report_reads_whatever_metrics_the_table_has(tmp_path, evaluation_tables):
    """A metrics table without MAPE (binary targets stop reporting it) still renders; the
    missing numbers are dashes in the summary and absent from the target's own row."""
    from mimir.evaluation.evaluate import evaluate_predictions, read_predictions_csv
    from mimir.report.evaluation_report import write_evaluation_report
    from mimir.targets.exports import read_reference

    predictions_path, reference_path = evaluation_tables
    predictions = read_predictions_csv(predictions_path, reference_path)
    reference = read_reference(reference_path)
    metrics = evaluate_predictions(predictions, reference).drop(columns=["mape_percent"])
    page = write_evaluation_report(tmp_path / "out", predictions, reference, metrics).read_text()
    sex = re.search(r'<article class="target" id="target-sex">.*?</article>', page, re.DOTALL).group(0)
    assert re.findall(r'<th class="num">([^<]*)</th>', sex) == ["N", "ICC", "R\u00b2", "MAE", "Bias", "AUC"]  # a probability has no sd, so no AUCE
    summary_row = re.search(r'<tr><td><a href="#target-sex">sex</a></td>(.*?)</tr>', page).group(1)
    assert re.findall(r'<td class="num[^"]*">([^<]*)</td>', summary_row)[4] == "\u2013"
