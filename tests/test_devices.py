"""Devices and precisions: one vocabulary, the two meanings of "auto", one-line errors."""

from __future__ import annotations

import argparse

import pytest
import torch

from mimir.cli import main
from mimir.devices import (
    DEVICE_CHOICES,
    PRECISIONS,
    DeviceError,
    cpu_model,
    device_description,
    is_device_name,
    precision_name,
    resolve_device,
    resolve_precision,
)
from mimir.errors import MimirError

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable CUDA GPU")


def test_precision_choice():
    assert resolve_precision("auto", "cpu") is None
    assert resolve_precision("float32", "cpu") is None
    assert resolve_precision("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(DeviceError, match="float16 is for CUDA"):
        resolve_precision("float16", "cpu")
    with pytest.raises(DeviceError, match="unknown precision"):
        resolve_precision("half", "cpu")


def test_auto_on_a_cpu_trains_in_bfloat16_only_where_it_is_native_and_predicts_in_float32(monkeypatch):
    import mimir.devices as devices

    for native, trained in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(devices, "cpu_supports_bfloat16", lambda native=native: native)
        assert resolve_precision("auto", "cpu", training=True) is trained
        assert resolve_precision("auto", "cpu", training=False) is None
        assert resolve_precision("float32", "cpu", training=True) is None
    with pytest.raises(DeviceError, match="float16 is for CUDA"):
        resolve_precision("float16", "cpu", training=True)


def test_auto_on_a_gpu_is_float16_for_prediction_and_bfloat16_where_possible_for_training(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_precision("auto", "cuda") == torch.float16
    assert resolve_precision("auto", "cuda:1", training=True) == torch.bfloat16
    assert resolve_precision("bfloat16", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert resolve_precision("auto", "cuda", training=True) == torch.float16
    with pytest.raises(DeviceError, match="no bfloat16 support"):
        resolve_precision("bfloat16", "cuda")


def test_precision_names_round_trip():
    for name in PRECISIONS[1:]:
        dtype = resolve_precision(name, "cuda") if name == "float16" else resolve_precision(name, "cpu")
        assert precision_name(dtype) == name


def test_device_names():
    for name in ("auto", "cpu", "cuda", "cuda:0", "cuda:12"):
        assert is_device_name(name) and name in DEVICE_CHOICES
    for name in ("mps", "gpu", "cuda:", "cuda:x", "CPU", "cuda:N"):
        assert not is_device_name(name) and name not in DEVICE_CHOICES
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DeviceError, match="unknown device 'mps'; choose from auto, cpu, cuda, cuda:N"):
        resolve_device("mps")


def test_device_error_is_a_mimir_error_and_a_value_error():
    assert issubclass(DeviceError, MimirError) and issubclass(DeviceError, ValueError)


@no_gpu
def test_cuda_without_a_gpu_is_a_device_error():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError, match="no usable CUDA GPU"):
            resolve_device(name)


def test_commands_take_device_names_from_one_place(capsys):
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", choices=DEVICE_CHOICES)
    assert parser.parse_args(["--device", "cuda:1"]).device == "cuda:1"
    with pytest.raises(SystemExit):
        parser.parse_args(["--device", "mps"])
    assert "invalid choice: 'mps' (choose from 'auto', 'cpu', 'cuda', 'cuda:N')" in capsys.readouterr().err
    for command in (["train"], ["crossval", "run"], ["predict"], ["show"]):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        assert "{auto,cpu,cuda,cuda:N}" in capsys.readouterr().out


@no_gpu
def test_train_on_cuda_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    targets = tmp_path / "targets.csv"
    targets.write_text("eid,instance,age\n1,2,60\n")
    config = tmp_path / "config.toml"
    config.write_text('architecture = "resnet18"\ninit = "scratch"\n')
    argv = ["-q", "train", "--cache", str(images), "--targets", str(targets), "--module", "age", "--config", str(config)]
    assert main([*argv, "--out", str(tmp_path / "run"), "--device", "cuda"]) == 2
    error = capsys.readouterr().err
    assert error == "mimir train: error: device 'cuda' asked for, but torch sees no usable CUDA GPU\n"
    assert not (tmp_path / "run").exists()


def test_cpu_model_reads_cpuinfo_and_falls_back(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Example CPU @ 2.0GHz\n\nprocessor\t: 1\n")
    assert cpu_model(str(info)) == "Example CPU @ 2.0GHz"
    info.write_text("processor\t: 0\nProcessor\t: ARMv8 Processor rev 1\n")  # some ARM kernels name it so
    assert cpu_model(str(info)) == "ARMv8 Processor rev 1"
    monkeypatch.setattr("platform.processor", lambda: "")
    assert cpu_model(str(tmp_path / "absent")) == "unknown CPU"


def test_a_cpu_session_records_model_kernels_and_threads():
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        description = device_description("cpu")
    finally:
        torch.set_num_threads(threads)
    assert description == f"cpu: {cpu_model()} ({torch.backends.cpu.get_cpu_capability()} kernels, 1 thread)"
