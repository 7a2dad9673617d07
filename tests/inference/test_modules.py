import argparse
import dataclasses
import json
import math
import sys
import subprocess
import tarfile
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from mimir.cli import module_cmd
from mimir.cli.common_flags import OutputExistsError
from mimir.inference.module_build import build_module
from mimir.inference.modules import (
    ModuleArchiveError,
    ModuleBuildError,
    ModuleChecksumError,
    ModuleMissingFileError,
    ModuleRepresentationError,
    ModuleShapeError,
    ModuleSpec,
    ModuleSpecError,
    ModuleTruncatedError,
    ModuleVersionError,
    Provenance,
    TargetSpec,
    describe_module,
    load_module,
    read_spec,
    save_module,
)
from mimir.inference.postprocess import postprocess
from mimir.network import MeanVarianceResNet, split_output


def _targets() -> tuple[TargetSpec, ...]:
    return (
        TargetSpec("height", 12144, "cm", "continuous", mean=170.0, sd=9.0, calibration=1.3,
                   cv_metrics={"mae": 1.8, "icc": 0.96, "bias": -0.37}, sd_p99=4.2),
        TargetSpec("liverVolume", None, "L", "continuous", mean=1.6, sd=0.3, calibration=0.8),
    )


def _spec(**changes) -> ModuleSpec:
    spec = ModuleSpec(
        name="tiny", architecture="resnet18", targets=_targets(),
        provenance=Provenance("training", config={"iterations": 3}, data={"n_exams": 5}),
        input_pool=4,
    )
    return dataclasses.replace(spec, **changes)


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    network = MeanVarianceResNet("resnet18", 2, input_pool=4)
    with torch.no_grad():
        network.fc.weight.mul_(1e-3)
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return network.state_dict()


@pytest.fixture()
def module_dir(tmp_path, state):
    return save_module(_spec(), state, tmp_path / "tiny")


def _images(n: int = 2, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 256, 256), dtype=np.uint8)


def _rewrite_spec(module_dir, edit) -> None:
    path = module_dir / "module.json"
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def test_round_trip_keeps_spec_weights_and_predictions(module_dir, state):
    loaded = load_module(module_dir)
    spec = loaded.spec
    assert spec.name == "tiny" and spec.architecture == "resnet18" and spec.input_pool == 4
    assert spec.targets == _targets()
    assert spec.provenance.config == {"iterations": 3} and spec.provenance.created
    assert len(spec.weights_sha256) == 64 and spec.weights_bytes == (module_dir / "weights.safetensors").stat().st_size
    assert not loaded.network.training
    for key, tensor in loaded.network.state_dict().items():
        assert torch.equal(tensor, state[key]), key

    images = _images()
    reference = MeanVarianceResNet("resnet18", 2, input_pool=4)
    reference.load_state_dict(state)
    reference.eval()
    with torch.no_grad():
        raw = reference(torch.from_numpy(images).float())
    mean, sd = loaded.predict_arrays(images)
    expected_mean, expected_sd = postprocess(raw, spec)
    np.testing.assert_array_equal(mean, expected_mean)
    np.testing.assert_array_equal(sd, expected_sd)
    assert mean.shape == (2, 2) and np.isfinite(sd).all()
    assert not list(module_dir.parent.glob(".*part*")), "staging folder left behind"


def test_zip_and_tar_archives_load_like_the_folder(tmp_path, module_dir, state):
    zipped = save_module(_spec(), state, tmp_path / "tiny.zip")
    with zipfile.ZipFile(zipped) as archive:
        assert sorted(archive.namelist()) == ["tiny/module.json", "tiny/weights.safetensors"]
    tarred = tmp_path / "tiny.tar"
    with tarfile.open(tarred, "w") as archive:
        archive.add(module_dir, arcname="tiny")
    folder_weights = load_module(module_dir).network.state_dict()
    for archive_path in (zipped, tarred):
        loaded = load_module(archive_path)
        assert loaded.spec.target_names == ("height", "liverVolume")
        assert all(torch.equal(folder_weights[k], v) for k, v in loaded.network.state_dict().items())


def test_truncated_archive_is_an_archive_error(tmp_path, state):
    zipped = save_module(_spec(), state, tmp_path / "tiny.zip")
    zipped.write_bytes(zipped.read_bytes()[:5000])
    with pytest.raises(ModuleArchiveError):
        load_module(zipped)


def test_flipped_weight_byte_is_a_checksum_error(module_dir):
    weights = module_dir / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModuleChecksumError, match="altered or corrupted"):
        load_module(module_dir)
    assert "FAILED: ModuleChecksumError" in describe_module(module_dir)


def test_truncated_weights_are_reported_as_truncated(module_dir):
    weights = module_dir / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ModuleTruncatedError, match="interrupted"):
        load_module(module_dir)


def test_missing_weights_file(module_dir):
    (module_dir / "weights.safetensors").unlink()
    with pytest.raises(ModuleMissingFileError, match="weights.safetensors"):
        load_module(module_dir)


def test_other_format_version_is_refused(module_dir):
    _rewrite_spec(module_dir, lambda d: d.update(format_version=3))
    with pytest.raises(ModuleVersionError, match="version 3"):
        load_module(module_dir)
    with pytest.raises(ModuleVersionError):
        describe_module(module_dir)


def test_other_representation_is_refused_unless_asked(module_dir):
    _rewrite_spec(module_dir, lambda d: d["input"].update(representation_version="mimir-2d-v0"))
    with pytest.raises(ModuleRepresentationError, match="mimir-2d-v0"):
        load_module(module_dir)
    assert load_module(module_dir, expected_representation=None).spec.representation_version == "mimir-2d-v0"


def test_missing_or_mistyped_keys_and_truncated_json(module_dir):
    original = (module_dir / "module.json").read_text()
    _rewrite_spec(module_dir, lambda d: d["targets"][0]["standardization"].pop("sd"))
    with pytest.raises(ModuleSpecError, match=r"targets\[0\]\.standardization\.sd is missing"):
        read_spec(module_dir)
    (module_dir / "module.json").write_text(original)
    _rewrite_spec(module_dir, lambda d: d.update(architecture=18))
    with pytest.raises(ModuleSpecError, match="architecture has the wrong type"):
        read_spec(module_dir)
    (module_dir / "module.json").write_text(original[: len(original) // 2])
    with pytest.raises(ModuleSpecError, match="not valid JSON"):
        load_module(module_dir)


def test_target_count_must_match_the_final_layer(tmp_path, module_dir, state):
    three = _spec(targets=(*_targets(), TargetSpec("weight", 21002, "kg", "continuous", 80.0, 14.0)))
    with pytest.raises(ModuleShapeError, match="needs 2 per target = 6"):
        save_module(three, state, tmp_path / "three")
    assert not (tmp_path / "three").exists()
    _rewrite_spec(module_dir, lambda d: d["targets"].pop())
    with pytest.raises(ModuleShapeError, match="2 outputs per target|needs 2 per target = 2"):
        load_module(module_dir)


def test_architecture_keys_must_match(tmp_path, state):
    with pytest.raises(ModuleShapeError, match="not a resnet34"):
        save_module(_spec(architecture="resnet34"), state, tmp_path / "wrong")
    wide = dict(state)
    wide["conv1.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(ModuleShapeError, match="conv1.weight"):
        save_module(_spec(), wide, tmp_path / "wrong")


def test_existing_output_is_kept_unless_overwrite(tmp_path, module_dir, state):
    with pytest.raises(FileExistsError):
        save_module(_spec(), state, module_dir)
    save_module(_spec(name="renamed"), state, module_dir, overwrite=True)
    assert read_spec(module_dir).name == "renamed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_describe_lists_targets_units_calibration_and_metrics(module_dir):
    text = describe_module(module_dir)
    assert "module tiny" in text and "resnet18" in text
    assert "OK (checksum" in text
    height_line = next(line for line in text.splitlines() if line.strip().startswith("height"))
    assert "cm" in height_line and "1.300" in height_line and "4.2" in height_line and "1.8" in height_line
    assert "cv bias" in text and "-0.37" in height_line


def _fake_run(tmp_path, state):
    from mimir.runs.config import TrainConfig
    from mimir.runs.standardization import Standardization

    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(run / "weights.safetensors"))
    standardization = Standardization("organs", ("liverFat", "liverVolume"), np.array([5.0, 1.6]), np.array([4.0, 0.3]), np.array([40, 38]))
    (run / "standardization.json").write_text(standardization.to_json())
    TrainConfig(architecture="resnet18", input_pool=4, log_var_min=-3.0, log_var_max=3.0).write_toml(run / "config.toml")
    (run / "data_summary.json").write_text(json.dumps({"train": {"n_exams": 40}}))
    return run


def test_build_without_crossval_reproduces_the_training_run_predictions(tmp_path, state, caplog):
    from mimir.runs.standardization import Standardization

    run = _fake_run(tmp_path, state)
    with caplog.at_level("WARNING"):
        out = build_module(run, None, tmp_path / "organs")
    assert "no cross-validation" in caplog.text and "mimir module calibrate" in caplog.text
    loaded = load_module(out)
    spec = loaded.spec
    assert spec.name == "organs" and spec.architecture == "resnet18" and spec.input_pool == 4
    assert spec.log_var_range == (-3.0, 3.0)
    assert [t.calibration for t in spec.targets] == [1.0, 1.0]
    assert [(t.unit, t.ukb_field) for t in spec.targets] == [("%", 22402), ("L", None)]
    assert spec.provenance.data["training"] == {"train": {"n_exams": 40}}

    images = _images(2, seed=5)
    mean, sd = loaded.predict_arrays(images)
    with torch.no_grad():
        raw = loaded.network(torch.from_numpy(images).float())
    standardised_mean, log_var = split_output(raw, (-3.0, 3.0))
    standardization = Standardization.from_json((run / "standardization.json").read_text())
    expected_mean, expected_sd = standardization.invert(standardised_mean.double().numpy(), log_var.double().numpy())
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(sd, expected_sd, rtol=1e-12)


def test_build_with_crossval_records_calibration_metrics_and_sd_percentile(tmp_path, state):
    run = _fake_run(tmp_path, state)
    cv = tmp_path / "cv"
    cv.mkdir()
    pd.DataFrame({"target": ["liverVolume", "liverFat"], "variance_scale": [2.25, 0.81]}).to_csv(cv / "calibration.csv", index=False)
    pd.DataFrame({"name": ["liverFat", "liverVolume"], "unit": ["%", "L"], "mae": [1.1, 0.09], "icc": [0.97, np.nan],
                  "cv_mae": [9.0, 9.0]}).to_csv(cv / "metrics.csv", index=False)
    sds = np.linspace(0.1, 1.0, 200)
    pd.DataFrame({"eid": range(200), "instance": 2, "liverFat": 1.0, "liverFat_sd": sds * 10,
                  "liverVolume": 1.0, "liverVolume_sd": sds}).to_csv(cv / "oof_predictions.csv", index=False)
    spec = load_module(build_module(run, cv, tmp_path / "organs.zip", name="organs-cv")).spec
    fat, volume = spec.targets
    assert spec.name == "organs-cv"
    assert (fat.calibration, volume.calibration) == (0.81, 2.25)
    assert fat.cv_metrics == {"mae": 1.1, "icc": 0.97} and volume.cv_metrics == {"mae": 0.09}
    assert math.isclose(volume.sd_p99, float(np.percentile(sds * 1.5, 99)))
    assert math.isclose(fat.sd_p99, float(np.percentile(sds * 10 * 0.9, 99)))


def test_the_uncertainty_flag_is_kept_only_where_its_threshold_carries_over_between_folds(tmp_path, state, caplog):
    run = _fake_run(tmp_path, state)
    cv = tmp_path / "cv"
    cv.mkdir()
    pd.DataFrame({"target": ["liverVolume", "liverFat"], "variance_scale": [1.0, 1.0]}).to_csv(cv / "calibration.csv", index=False)
    rng = np.random.default_rng(0)
    folds = np.repeat([0, 1, 2], 400)
    alike = rng.lognormal(0.0, 0.3, folds.size)  # every fold network's sds of one scale
    # the third fold network's sds are twice the others': a threshold from two folds flags most of the third
    apart = alike * np.where(folds == 2, 2.0, 1.0)
    pd.DataFrame({"eid": range(folds.size), "instance": 2, "fold": folds, "liverFat": 1.0, "liverFat_sd": apart,
                  "liverVolume": 1.0, "liverVolume_sd": alike}).to_csv(cv / "oof_predictions.csv", index=False)
    spec = load_module(build_module(run, cv, tmp_path / "organs", name="organs-cv")).spec
    fat, volume = spec.targets
    assert volume.sd_p99 == pytest.approx(float(np.percentile(alike, 99)))
    assert volume.cv_metrics["uncertain_rate_held_out"] <= 0.03
    assert fat.sd_p99 is None and fat.cv_metrics["uncertain_rate_held_out"] > 0.1
    assert "target liverFat: no uncertainty flag" in caplog.text


def test_build_errors_name_the_missing_piece(tmp_path, state):
    run = _fake_run(tmp_path, state)
    cv = tmp_path / "cv"
    cv.mkdir()
    with pytest.raises(ModuleMissingFileError, match="calibration.csv"):
        build_module(run, cv, tmp_path / "m")
    pd.DataFrame({"target": ["liverFat"], "variance_scale": [1.0]}).to_csv(cv / "calibration.csv", index=False)
    with pytest.raises(ModuleBuildError, match="no row for target liverVolume"):
        build_module(run, cv, tmp_path / "m")
    (run / "standardization.json").unlink()
    with pytest.raises(ModuleMissingFileError, match="standardization.json"):
        build_module(run, None, tmp_path / "m")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    module_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.handler(args)


def test_cli_info_build_and_errors(tmp_path, module_dir, state, capsys):
    assert _cli(["module", "info", str(module_dir)]) == 0
    assert "liverVolume" in capsys.readouterr().out
    run = _fake_run(tmp_path, state)
    assert _cli(["module", "build", "--run", str(run), "--out", str(tmp_path / "built")]) == 0
    assert read_spec(tmp_path / "built").name == "organs"
    with pytest.raises(OutputExistsError, match="exists already; pass --force"):
        _cli(["module", "build", "--run", str(run), "--out", str(tmp_path / "built")])
    weights = module_dir / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert _cli(["module", "info", str(module_dir)]) == 1
    assert "ModuleTruncatedError" in capsys.readouterr().out


def test_describe_does_not_import_torch(module_dir):
    code = (
        "import sys\n"
        "from mimir.inference import describe_module\n"
        f"assert 'tiny' in describe_module({str(module_dir)!r})\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_a_killed_write_leaves_nothing_the_next_write_keeps(tmp_path, state):
    import os
    import subprocess
    import sys

    from mimir.atomic import _host

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    staging = tmp_path / f".tiny.{_host()}-{dead}.0a1b2c3d.part"  # kill -9 during import-legacy left it
    staging.mkdir()
    (staging / "weights.safetensors").write_bytes(b"half written")
    archive_part = tmp_path / f".tiny.zip.{_host()}-{dead}.k2j_x9ab.part"
    archive_part.write_bytes(b"half an archive")
    previous = os.umask(0o022)
    try:
        save_module(_spec(), state, tmp_path / "tiny")
        save_module(_spec(), state, tmp_path / "tiny.zip")
    finally:
        os.umask(previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny", "tiny.zip"]
    assert (tmp_path / "tiny").stat().st_mode & 0o777 == 0o755  # mkdtemp made it 0700
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "tiny").iterdir()} == {0o644}
    assert (tmp_path / "tiny.zip").stat().st_mode & 0o777 == 0o644


def test_an_unwritable_module_output_is_one_line_before_any_work(tmp_path, state, capsys, monkeypatch):
    import mimir.inference.module_build as module_build
    from mimir.cli import main
    from mimir.inference.modules import ModuleOutputError

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    run = _fake_run(tmp_path, state)

    def no_work(*args, **kwargs):
        raise AssertionError("the run was read before the output was checked")

    monkeypatch.setattr(module_build, "RunFolder", no_work)
    with pytest.raises(ModuleOutputError, match="is not a folder"):
        module_build.build_module(run, None, blocker / "out" / "module")
    assert main(["module", "build", "--run", str(run), "--out", str(blocker / "module")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"mimir module: error: {blocker / 'module'}: {blocker} is not a folder"


def test_the_same_weights_make_the_same_weights_file(tmp_path, state):
    """Module builds are reproducible: safetensors orders a metadata map differently in each
    process, so the weights file carries a single metadata key (and module.json one checksum)."""
    from mimir.inference.modules import WEIGHTS_FILE

    first = save_module(_spec(), state, tmp_path / "first")
    second = save_module(_spec(), state, tmp_path / "second")
    data = (first / WEIGHTS_FILE).read_bytes()
    assert data == (second / WEIGHTS_FILE).read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert list(header["__metadata__"]) == ["format"]
