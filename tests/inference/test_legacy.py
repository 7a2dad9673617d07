import numpy as np
import pytest
import torch
from torchvision.models import resnet50

from mimir.inference.legacy import (
    LegacyMissingFileError,
    LegacyRowCountError,
    LegacyShapeError,
    LegacySnapshotError,
    LegacyTextFileError,
    LegacyUnsafeSnapshotError,
    import_legacy,
)
from mimir.inference.modules import ModuleShapeError, describe_module, load_module

#: name, field, unit (after the divisor), divisor, mean, stdev, calibration factor
ROWS = [
    ("liverVolume", "", "L", 1000.0, 1600.0, 300.0, 1.2),
    ("liverFat", "22402", "%", 1.0, 5.0, 4.0, 0.9),
    ("mysteryScore", "99999", "points", 10.0, 50.0, 20.0, 1.5),
]


class NotATensor:
    """Only a full unpickling could rebuild this: weights_only must refuse it."""


def _write_texts(folder, rows=ROWS) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "metadata.txt").write_text("name,field,unit,divisor\n" + "".join(f"{r[0]},{r[1]},{r[2]},{r[3]}\n" for r in rows))
    (folder / "standardization_parameters.txt").write_text("mean,stdev\n" + "".join(f"{r[4]},{r[5]}\n" for r in rows))
    (folder / "calibration_factors.txt").write_text("factor\n" + "".join(f"{r[6]}\n" for r in rows))


def _published_prediction(network, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The published post-processing, step by step (variance divided by the divisor once)."""
    with torch.no_grad():
        out = network(torch.from_numpy(images).to(torch.float32)).double().numpy()
    means, variances = [], []
    for index, (_, _, _, divisor, mean, stdev, factor) in enumerate(ROWS):
        value = out[:, 2 * index] * stdev + mean
        variance = np.exp(out[:, 2 * index + 1]) * stdev**2
        variance = variance * factor
        means.append(value / divisor)
        variances.append(variance / divisor)
    return np.stack(means, axis=1), np.stack(variances, axis=1)


def test_published_module_imports_and_matches_the_published_numbers(tmp_path):
    torch.manual_seed(3)
    network = resnet50(weights=None)
    network.fc = torch.nn.Linear(2048, 2 * len(ROWS))
    with torch.no_grad():
        network.fc.weight.mul_(2e-4)  # keep exp(log_var) of an untrained network in range
    network.eval()
    folder = tmp_path / "published_organs"
    _write_texts(folder)
    state = {f"module.{key}": value for key, value in network.state_dict().items()}  # DataParallel prefix
    torch.save({"state_dict": state, "epoch": 7}, folder / "snapshot.pth.tar")

    out = import_legacy(folder, tmp_path / "organs")
    loaded = load_module(out)
    spec = loaded.spec
    assert spec.name == "published_organs" and spec.architecture == "resnet50" and spec.log_var_range is None
    volume, fat, mystery = spec.targets
    assert (volume.unit, volume.in_catalog, volume.mean, volume.sd) == ("L", True, 1.6, 0.3)
    assert (fat.ukb_field, fat.calibration) == (22402, 0.9)
    assert (mystery.in_catalog, mystery.ukb_field, mystery.unit, mystery.kind) == (False, 99999, "points", "continuous")
    assert any("divisor" in note for note in spec.provenance.notes)
    assert "not in catalog" in describe_module(out)

    images = np.random.default_rng(0).integers(0, 256, (2, 3, 256, 256), dtype=np.uint8)
    mean, sd = loaded.predict_arrays(images)
    published_mean, published_variance = _published_prediction(network, images)
    assert np.isfinite(published_variance).all() and (published_variance > 0).all()
    np.testing.assert_allclose(mean, published_mean, rtol=1e-12)
    divisors = np.array([row[3] for row in ROWS])
    # our fix: variance in (unit/divisor)^2, i.e. the published variance divided by the divisor once more
    np.testing.assert_allclose(sd**2, published_variance / divisors, rtol=1e-12)
    np.testing.assert_allclose(sd[:, 1] ** 2, published_variance[:, 1], rtol=1e-12)


def _snapshot_with_head(folder, outputs: int) -> None:
    """A snapshot whose only tensors are a final layer: enough for checks that precede the network."""
    torch.save({"state_dict": {"fc.weight": torch.zeros(outputs, 2048), "fc.bias": torch.zeros(outputs)}}, folder / "snapshot.pth.tar")


def test_missing_files_are_named(tmp_path):
    folder = tmp_path / "published"
    _write_texts(folder)
    _snapshot_with_head(folder, 6)
    (folder / "calibration_factors.txt").unlink()
    with pytest.raises(LegacyMissingFileError, match="calibration_factors.txt"):
        import_legacy(folder, tmp_path / "out")
    with pytest.raises(LegacyMissingFileError, match="not found"):
        import_legacy(tmp_path / "nowhere", tmp_path / "out")


def test_row_count_mismatch(tmp_path):
    folder = tmp_path / "published"
    _write_texts(folder)
    _snapshot_with_head(folder, 6)
    (folder / "standardization_parameters.txt").write_text("mean,stdev\n1600,300\n5,4\n")
    with pytest.raises(LegacyRowCountError, match="standardization_parameters.txt: 2"):
        import_legacy(folder, tmp_path / "out")


def test_malformed_lines(tmp_path):
    folder = tmp_path / "published"
    _write_texts(folder)
    _snapshot_with_head(folder, 6)
    (folder / "metadata.txt").write_text("name,field,unit,divisor\nliverVolume,,L,thousand\nliverFat,22402,%,1\nx,1,u,1\n")
    with pytest.raises(LegacyTextFileError, match=r"metadata.txt:2: divisor 'thousand'"):
        import_legacy(folder, tmp_path / "out")
    _write_texts(folder, [(*ROWS[0][:5], 0.0, ROWS[0][6]), *ROWS[1:]])
    with pytest.raises(LegacyTextFileError, match="stdev must be positive"):
        import_legacy(folder, tmp_path / "out")


def test_final_layer_must_match_the_metadata(tmp_path):
    folder = tmp_path / "published"
    _write_texts(folder)
    _snapshot_with_head(folder, 8)
    with pytest.raises(LegacyShapeError, match="8 outputs but metadata.txt lists 3 targets"):
        import_legacy(folder, tmp_path / "out")
    assert issubclass(LegacyShapeError, ModuleShapeError)
    assert not (tmp_path / "out").exists()


def test_snapshot_needing_code_execution_is_refused(tmp_path):
    folder = tmp_path / "published"
    _write_texts(folder)
    torch.save({"state_dict": {"fc.weight": torch.zeros(6, 2048)}, "extra": NotATensor()}, folder / "snapshot.pth.tar")
    with pytest.raises(LegacyUnsafeSnapshotError, match="refused"):
        import_legacy(folder, tmp_path / "out")


def test_corrupt_or_wrong_snapshots(tmp_path):
    folder = tmp_path / "published"
    _write_texts(folder)
    (folder / "snapshot.pth.tar").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(LegacySnapshotError, match="not a readable torch checkpoint"):
        import_legacy(folder, tmp_path / "out")
    torch.save({"weights": [1, 2, 3]}, folder / "snapshot.pth.tar")
    with pytest.raises(LegacySnapshotError, match="state dict"):
        import_legacy(folder, tmp_path / "out")


def test_incomplete_resnet50_is_refused_before_writing(tmp_path):
    folder = tmp_path / "published"
    _write_texts(folder)
    _snapshot_with_head(folder, 6)
    with pytest.raises(ModuleShapeError, match="not a resnet50"):
        import_legacy(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_unwritable_output_is_one_line_before_the_snapshot_is_read(tmp_path, capsys, monkeypatch):
    import mimir.inference.legacy as legacy_module
    from mimir.cli import main
    from mimir.inference.modules import ModuleOutputError

    folder = tmp_path / "published"
    _write_texts(folder)
    _snapshot_with_head(folder, 2 * len(ROWS))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")

    def no_work(*args, **kwargs):
        raise AssertionError("the snapshot was read before the output was checked")

    monkeypatch.setattr(legacy_module, "read_legacy_snapshot", no_work)
    with pytest.raises(ModuleOutputError, match="is not a folder"):
        import_legacy(folder, blocker / "organs")
    assert main(["module", "import-legacy", str(folder), "--out", str(blocker / "organs")]) == 2
    assert capsys.readouterr().err.strip() == f"mimir module: error: {blocker / 'organs'}: {blocker} is not a folder"
