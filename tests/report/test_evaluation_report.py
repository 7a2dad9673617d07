"""`mimir evaluate` writes the metrics and the evaluation report (or only the metrics)."""

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
