"""The README's main command, end to end in a reduced size."""

import json
import re

import pandas as pd
import pytest

from mimir.cli import main
from mimir.demo import DemoConfig, DemoConfigError


def test_demo_sizes_that_cannot_cross_validate_are_refused():
    with pytest.raises(DemoConfigError, match="too small for 3 folds"):
        DemoConfig(n_train=5)
    with pytest.raises(DemoConfigError, match="held-out"):
        DemoConfig(n_test=0)


def test_demo_runs_end_to_end_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    arguments = ["demo", "--out", str(out), "--n-train", "6", "--n-test", "2", "--folds", "2",
                 "--iterations", "3", "--workers", "1"]
    assert main(arguments) == 0
    printed = capsys.readouterr()
    assert "evaluation report:" in printed.out and "predictions:" in printed.out
    # stderr is no terminal here: each stage ends with one plain line (it would be a bar on a terminal)
    assert "\r" not in printed.err and "\x1b[" not in printed.err
    for stage in ("synth train 6/6", "synth test 2/2", "compress 6/6", "crossval fold 1 3/3", "train 3/3", "predict: predict 2/2"):
        assert f"{stage} (100 %), " in printed.err
    arguments.insert(0, "-q")

    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 2
    assert {"weight", "weight_sd", "weight_low", "weight_high", "failure", "qc_flag"} <= set(predictions.columns)
    assert predictions["weight"].notna().all()
    assert (predictions["weight_low"] < predictions["weight"]).all()
    metrics = pd.read_csv(out / "evaluation" / "metrics.csv")
    assert set(metrics["name"]) >= {"weight", "height", "AtlasVatVolume"}
    modules = re.search(r'<section id="modules">.*?</section>', (out / "evaluation" / "report.html").read_text(), re.DOTALL)
    assert modules and "<td>demo</td><td>training</td><td>mimir-module 1</td>" in modules.group(0)
    assert (out / "crossval" / "report.html").is_file()
    assert json.loads((out / "module" / "module.json").read_text())["name"] == "demo"
    assert not list((out / "train").glob("*.zip")), "training zips are removed once compressed"

    cohort_record = (out / "train" / "cohort.json").stat().st_mtime_ns
    weights = (out / "run" / "weights.safetensors").read_bytes()
    assert main(arguments) == 0
    assert (out / "train" / "cohort.json").stat().st_mtime_ns == cohort_record
    assert (out / "run" / "weights.safetensors").read_bytes() == weights
