"""Cohort maps of a cross-validation: out-of-fold exams explained by their own fold's network, in the report.

A tiny cross-validation (2 folds of a ResNet18 on 64 x 64 pooled input, 3 iterations each) on
drawn body images whose target is the area of a bright organ, run once for the module through
the command with --explain.
"""

from __future__ import annotations

import base64
import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

TARGET = "liverVolume"

N_EXAMS = 10
FOLDS = 2


@pytest.fixture(scope="module")
def crossval(tmp_path_factory: pytest.TempPathFactory, draw_organ_image) -> tuple[Path, Path, str]:
    """(cross-validation folder, cache, what the command printed), run with --explain."""
    from mimir.cli import main
    from mimir.runs.config import TrainConfig

    root = tmp_path_factory.mktemp("cv_explain")
    cache = root / "cache"
    cache.mkdir()
    rng = np.random.default_rng(5)
    rows = []
    for index in range(N_EXAMS):
        radius = rng.uniform(8.0, 30.0)
        eid = 3_000_000 + index
        np.save(cache / f"{eid}_20201_2_0.npy", draw_organ_image(rng, radius))
        rows.append({"eid": eid, "instance": 2, TARGET: np.pi * radius**2 / 1000.0})
    pd.DataFrame(rows).to_csv(root / "targets.csv", index=False)
    config = TrainConfig(
        architecture="resnet18", init="scratch", input_pool=4, autocast="float32", batch_size=4,
        iterations=3, learning_rate=1e-3, lr_milestones=[3], checkpoint_every=3, log_every=3,
        eval_batch_size=4, deterministic=True, seed=3, modules={"organ": [TARGET]},
    )
    config.write_toml(root / "tiny.toml")
    out = root / "cv"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["-q", "crossval", "run", "--cache", str(cache), "--targets", str(root / "targets.csv"),
                     "--module", "organ", "--config", str(root / "tiny.toml"), "--out", str(out),
                     "--folds", str(FOLDS), "--device", "cpu", "--no-baseline", "--explain"]) == 0
    return out, cache, printed.getvalue()


def test_the_report_embeds_the_cohort_map_with_its_exam_count_and_method(crossval):
    out, _, printed = crossval
    html = (out / "report.html").read_text(encoding="utf-8")
    section = html[html.index('<section id="section-cohort-maps">'):]
    section = section[: section.index("</section>")]
    assert "Cohort saliency maps (gradcam)" in section
    assert re.search(rf"<td>{TARGET}</td><td class=\"num\">{N_EXAMS}</td><td>gradcam</td>", section), section[:2000]
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', section)
    assert len(embedded) == 1
    figure = out / "explain" / "gradcam" / "cohort_maps.png"
    assert base64.b64decode(embedded[0]) == figure.read_bytes()
    assert 'href="#section-cohort-maps"' in html  # listed in the contents
    assert f"cohort maps (gradcam) of {N_EXAMS} exams" in printed and str(figure) in printed


def test_every_exam_is_explained_by_the_network_of_its_own_fold(crossval, tmp_path):
    """Out of fold, like the predictions: each map equals its fold's module's map, not the other fold's."""
    from mimir.explain.pipeline import image_saliency
    from mimir.imaging.cache import image_path, load_image
    from mimir.inference.module_build import build_module

    out, cache, _ = crossval
    index = pd.read_csv(out / "explain" / "gradcam" / "explanations.csv", keep_default_na=False)
    oof = pd.read_csv(out / "oof_predictions.csv")
    assert len(index) == N_EXAMS and (index["failure"] == "").all()
    assert (index["figure"] == "").all() and list((out / "explain" / "gradcam").rglob(f"{TARGET}/*.png")) == []
    expected = {f"{row.eid}_20201_{row.instance}_0": row.fold for row in oof.itertuples()}
    assert dict(zip(index["exam"], index["fold"], strict=True)) == expected
    modules = [build_module(out / f"fold_{fold}", out, tmp_path / f"fold_{fold}") for fold in range(FOLDS)]
    checked = 0
    for row in index.groupby("fold").head(2).itertuples():
        saved = np.load(out / "explain" / "gradcam" / row.map)
        image = load_image(image_path(cache, row.exam))
        own = image_saliency(image, [modules[row.fold]], TARGET, device="cpu")
        other = image_saliency(image, [modules[1 - row.fold]], TARGET, device="cpu")
        np.testing.assert_allclose(saved, own, rtol=1e-4, atol=1e-6 * max(float(own.max()), 1e-12))
        assert not np.allclose(saved, other, rtol=1e-3, atol=0.0), row.exam
        checked += 1
    assert checked == 2 * FOLDS
    cohort = np.load(out / "explain" / "gradcam" / "cohort" / f"{TARGET}.npy")
    assert cohort.shape == (256, 256) and cohort.max() > 0


def test_merge_again_reuses_the_maps_and_finds_the_recorded_cache(crossval, capsys):
    from mimir.cli import main

    out, _, _ = crossval
    maps = sorted((out / "explain" / "gradcam").rglob("*.npy"))
    stamps = [path.stat().st_mtime_ns for path in maps if path.parent.name != "cohort"]
    assert main(["-q", "crossval", "merge", str(out), "--explain", "--device", "cpu"]) == 0  # no --cache: the recorded one
    assert f"cohort maps (gradcam) of {N_EXAMS} exams" in capsys.readouterr().out
    assert [path.stat().st_mtime_ns for path in maps if path.parent.name != "cohort"] == stamps


def test_explain_mistakes_are_refused_in_one_line(crossval, tmp_path, capsys):
    from mimir.cli import main

    out, _, _ = crossval
    assert main(["crossval", "merge", str(out), "--explain", "--no-report"]) == 2
    assert "--explain adds a section to the report: drop --no-report" in capsys.readouterr().err
    assert main(["crossval", "merge", str(out), "--explain", "--cache", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["crossval", "merge", str(out), "--explain", "--cache", str(empty), "--device", "cpu"]) == 2
    assert f"{empty} holds none of the {N_EXAMS} validation exams" in capsys.readouterr().err


def test_a_finer_grad_cam_layer_gets_its_own_folder_and_report_section(crossval, tmp_path, capsys):
    from mimir.cli import main

    out, _, _ = crossval
    last_stage = sorted((out / "explain" / "gradcam").rglob("*.npy"))
    stamps = [path.stat().st_mtime_ns for path in last_stage]
    assert main(["-q", "crossval", "merge", str(out), "--explain", "--layer", "layer3", "--device", "cpu"]) == 0
    assert f"cohort maps (gradcam-layer3) of {N_EXAMS} exams" in capsys.readouterr().out
    finer = out / "explain" / "gradcam-layer3"
    index = pd.read_csv(finer / "explanations.csv", keep_default_na=False)
    assert len(index) == N_EXAMS and set(index["method"]) == {"gradcam-layer3"}
    assert np.load(finer / "cohort" / f"{TARGET}.npy").shape == (256, 256)
    assert [path.stat().st_mtime_ns for path in last_stage] == stamps  # the layer4 maps are left as they were
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Cohort saliency maps (gradcam-layer3)" in html

    argv = ["crossval", "run", "--cache", str(tmp_path), "--targets", str(tmp_path / "t.csv"), "--module", "organ",
            "--out", str(tmp_path / "cv"), "--explain", "--method", "integrated-gradients", "--layer", "layer3"]
    assert main(argv) == 2
    assert "integrated-gradients has no layer" in capsys.readouterr().err
    assert not (tmp_path / "cv").exists()  # refused before any fold trained


def test_the_fold_modules_built_for_the_maps_log_nothing_of_a_shipped_module(crossval, caplog):
    """A fold's temporary module would warn, per fold, about its uncertainty flag and calibration
    and announce that it was written; none of that concerns the maps."""
    import logging

    from mimir.explain.crossval import explain_crossval

    out, cache, _ = crossval
    with caplog.at_level(logging.INFO):
        explain_crossval(out, cache=cache, method="gradcam", layer="layer2", device="cpu")
    from_building = [
        record.getMessage() for record in caplog.records
        if record.name.startswith("mimir.inference.module")
        and (record.levelno >= logging.WARNING or record.getMessage().startswith("wrote module"))
    ]
    assert from_building == []
