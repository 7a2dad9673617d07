import numpy as np
import pandas as pd

from mimir.cli import main


def _tables(tmp_path, n=60):
    rng = np.random.default_rng(4)
    eids = np.arange(1_000_000, 1_000_000 + n)
    weight = rng.normal(80, 12, n)
    sex = rng.integers(0, 2, n).astype(float)
    reference = pd.DataFrame({"eid": eids, "instance": 2, "weight": weight, "sex": sex})
    reference.loc[3, "weight"] = np.nan
    predictions = pd.DataFrame(
        {
            "eid": eids,
            "instance": 2,
            "weight": weight + rng.normal(0, 2, n),
            "weight_sd": np.full(n, 2.0),
            "sex": np.clip(sex + rng.normal(0, 0.2, n), 0, 1),
            "sex_sd": np.full(n, 0.2),
        }
    )
    predictions_path, reference_path = tmp_path / "predictions.csv", tmp_path / "reference.csv"
    predictions.to_csv(predictions_path, index=False)
    reference.to_csv(reference_path, index=False)
    return predictions_path, reference_path


def test_evaluate_writes_metrics_and_a_self_contained_report(tmp_path, capsys):
    predictions, reference = _tables(tmp_path)
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
    assert "report:" in capsys.readouterr().out


def test_evaluate_without_report(tmp_path):
    predictions, reference = _tables(tmp_path)
    out = tmp_path / "eval"
    assert main(["evaluate", str(predictions), str(reference), "--out", str(out), "--no-report"]) == 0
    assert (out / "metrics.csv").is_file()
    assert not (out / "report.html").exists()
