"""One exam's figure, from modules or from a predictions table (`mimir.show` and `mimir show`)."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mimir.cli import main, show_cmd
from mimir.errors import MimirError, PathNotFoundError
from mimir.inference.predict import PredictOptions, predict
from mimir.inference.table import PredictionTableError, write_predictions
from mimir.show import ShowError, show_exam

_HELPERS = importlib.util.spec_from_file_location(
    "synthetic_modules", Path(__file__).parent / "inference" / "synthetic_modules.py"
)
helpers = importlib.util.module_from_spec(_HELPERS)
_HELPERS.loader.exec_module(helpers)

STEM = "1234567_20201_2_0"


@pytest.fixture(scope="module")
def module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpers.make_module(tmp_path_factory.mktemp("modules") / "body", "body", helpers.BODY_TARGETS, seed=3)


@pytest.fixture()
def cache(tmp_path: Path) -> Path:
    folder = tmp_path / "predictions_cache"
    folder.mkdir()
    np.save(folder / f"{STEM}.npy", helpers.realistic_image(5))
    return folder


def show(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    show_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["show", *argv])
    return args.handler(args)


def assert_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > image.height > 300


def test_show_predicts_with_modules(module, cache, tmp_path, capsys):
    out = tmp_path / "figure.png"
    assert show([str(cache / f"{STEM}.npy"), "--modules", str(module), "--out", str(out), "--device", "cpu"]) == 0
    assert_png(out)
    assert f"figure: {out}" in capsys.readouterr().out


def test_an_exam_name_is_predicted_from_the_cache_it_names(module, cache, tmp_path):
    out = show_exam(STEM, tmp_path / "named.png", modules=[module], cache=cache, device="cpu")
    assert_png(out)


def test_show_from_a_predictions_table_and_the_cache_beside_it(module, cache, tmp_path):
    table = write_predictions(predict([cache], [module], PredictOptions(device="cpu")), tmp_path / "predictions.csv")
    out = tmp_path / "from_table.png"
    assert show([STEM, "--predictions", str(table), "--out", str(out)]) == 0
    assert_png(out)
    with pytest.raises(PredictionTableError, match="not in the predictions table"):
        show_exam("7654321_20201_2_0", tmp_path / "other.png", predictions=table)
    assert not (tmp_path / "other.png").exists()
    with pytest.raises(PathNotFoundError, match="no such predictions table"):
        show_exam(STEM, tmp_path / "other.png", predictions=tmp_path / "missing.csv")


def test_show_needs_an_existing_exam_or_a_cache(module, tmp_path):
    with pytest.raises(PathNotFoundError, match="an exam name needs a cache"):
        show_exam("7654321_20201_2_0", tmp_path / "x.png", modules=[module])
    with pytest.raises(PathNotFoundError, match="neither a file nor an image"):
        show_exam("7654321_20201_2_0", tmp_path / "x.png", modules=[module], cache=tmp_path)
    with pytest.raises(ShowError, match=".png"):
        show_exam(tmp_path, tmp_path / "x.jpg", modules=[module])
    with pytest.raises(PathNotFoundError, match="does not exist"):
        show_exam(tmp_path, tmp_path / "absent" / "x.png", modules=[module])
    with pytest.raises(ShowError, match="one of the two"):
        show_exam(tmp_path, tmp_path / "x.png")


def test_an_exam_without_predictions_is_an_error(module, tmp_path):
    bad = tmp_path / "9999999_20201_2_0.npy"
    np.save(bad, np.zeros((2, 2), dtype=np.uint8))
    with pytest.raises(ShowError, match="9999999_20201_2_0 has no predictions"):
        show_exam(bad, tmp_path / "x.png", modules=[module], cache=tmp_path / "cache", device="cpu")


def test_the_command_reports_a_mistake_in_one_line(module, tmp_path, capsys):
    assert main(["show", "7654321_20201_2_0", "--modules", str(module), "--out", str(tmp_path / "x.png")]) == 2
    error = capsys.readouterr().err
    assert error == "mimir show: error: 7654321_20201_2_0: no such file or folder (an exam name needs a cache, --cache)\n"


def test_a_figure_folder_that_takes_no_files_is_refused_before_predicting(module, cache, tmp_path, monkeypatch):
    """Root writes into read-only folders, so the probe's failure is simulated."""
    import errno

    from mimir import atomic

    def read_only(folder):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic, "probe_folder", read_only)
    monkeypatch.setattr("mimir.inference.predict.run_prediction", lambda *a, **k: pytest.fail("predicted first"))
    with pytest.raises(atomic.UnwritableError, match="cannot write in .*Read-only file system"):
        show_exam(STEM, tmp_path / "x.png", modules=[module], cache=cache)


def test_show_explain_draws_the_map_of_one_target_inside_the_figure(module, cache, tmp_path, capsys):
    """End to end: one PNG, the subject figure itself, whose image panels carry the map."""
    plain, mapped = tmp_path / "plain.png", tmp_path / "figure.png"
    assert show([STEM, "--cache", str(cache), "--modules", str(module), "--out", str(plain), "--device", "cpu"]) == 0
    assert show([STEM, "--cache", str(cache), "--modules", str(module), "--out", str(mapped), "--device", "cpu",
                 "--explain", "weight", "--method", "guided-gradcam"]) == 0
    assert_png(mapped)
    assert capsys.readouterr().out.splitlines()[-1] == f"figure: {mapped}"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["figure.png", "plain.png", "predictions_cache"]
    with Image.open(plain) as first, Image.open(mapped) as second:
        assert first.size == second.size
        difference = np.abs(np.asarray(second.convert("RGB"), np.int16) - np.asarray(first.convert("RGB"), np.int16)).sum(axis=2)
    left_third = difference[:, : difference.shape[1] // 3]  # the water panel, where the body is
    assert (left_third > 30).sum() > 500


def test_show_explain_refuses_a_target_or_source_it_cannot_explain(module, cache, tmp_path):
    out = tmp_path / "figure.png"
    with pytest.raises(MimirError, match="do not predict liverFat"):
        show_exam(STEM, out, modules=[module], cache=cache, explain="liverFat")
    with pytest.raises(ShowError, match="needs --modules"):
        show_exam(STEM, out, predictions=tmp_path / "table.csv", cache=cache, explain="weight")
    with pytest.raises(ShowError, match="integrated-gradients has no layer"):
        show_exam(STEM, out, modules=[module], cache=cache, explain="weight", method="integrated-gradients", layer="layer3")
    assert not out.exists()


def test_show_explain_at_an_earlier_layer_draws_another_map(module, cache, tmp_path, monkeypatch):
    """--layer reaches the map: the figure's saliency is the layer3 map of `image_saliency`."""
    import mimir.report.figure as figure_module

    drawn = []
    original = figure_module.subject_figure

    def recording_figure(*args, **kwargs):
        drawn.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(figure_module, "subject_figure", recording_figure)
    for layer in ("layer4", "layer3"):
        assert show([STEM, "--cache", str(cache), "--modules", str(module), "--out", str(tmp_path / f"{layer}.png"),
                     "--device", "cpu", "--explain", "weight", "--layer", layer]) == 0
    last, finer = drawn
    assert last["saliency_caption"].endswith("(gradcam)") and finer["saliency_caption"].endswith("(gradcam-layer3)")
    assert finer["saliency"].shape == (256, 256) and not np.allclose(finer["saliency"], last["saliency"])
