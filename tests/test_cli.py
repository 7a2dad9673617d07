import subprocess
import sys

import pytest

from mimir.cli import COMMANDS, build_parser, main


def _subcommand_names() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return list(action.choices)


def test_every_command_module_registers_a_subcommand():
    from mimir.cli.predict_cmd import MERGE_COMMAND

    assert len(_subcommand_names()) == len(COMMANDS) + 1  # predict_cmd also registers `predict merge`
    assert MERGE_COMMAND in _subcommand_names()


def test_predict_merge_is_two_words_wherever_the_options_stand(capsys):
    from mimir.cli import _two_word_commands

    assert _two_word_commands(["-q", "predict", "merge", "a.csv"]) == ["-q", "predict-merge", "a.csv"]
    assert _two_word_commands(["predict", "x", "merge"]) == ["predict", "x", "merge"]  # an input named merge
    with pytest.raises(SystemExit):
        main(["predict", "merge", "--help"])
    assert "usage: mimir predict merge" in capsys.readouterr().out


@pytest.mark.parametrize("name", _subcommand_names())
def test_subcommand_help_works(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert name.replace("-", " ") in capsys.readouterr().out


def test_help_and_listing_do_not_import_torch():
    code = (
        "import sys\n"
        "from mimir.cli import main\n"
        "main(['catalog'])\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by help'\n"
        "assert 'numpy' not in sys.modules, 'numpy imported by help'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_catalog_lists_all_targets(capsys):
    assert main(["catalog"]) == 0
    assert "72 targets" in capsys.readouterr().out


def test_catalog_csv_says_each_targets_interval_kind(capsys):
    import csv
    import io

    assert main(["catalog", "--csv"]) == 0
    rows = {row["name"]: row for row in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert len(rows) == 72
    assert rows["sex"]["interval"] == "probability" and rows["liverVolume"]["interval"] == "normal, bounded at 0"


def test_a_reader_that_stops_early_ends_the_command_quietly():
    """`mimir catalog | head -2`: no BrokenPipeError traceback, the shell's SIGPIPE status. The
    pipe's reading end is closed before the command writes, so its first write fails."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "mimir", "catalog"], stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert result.stderr == b""


def test_catalog_unknown_module_is_a_usage_error(capsys):
    assert main(["catalog", "--module", "brain"]) == 2
    assert "unknown module 'brain'" in capsys.readouterr().err


def test_a_library_mistake_ends_the_command_in_one_line_with_its_exit_code(tmp_path, capsys):
    np = pytest.importorskip("numpy")
    image = tmp_path / "1234567_20201_2_0.npy"
    np.save(image, np.zeros((3, 256, 256), dtype=np.uint8))
    missing = tmp_path / "no_module"
    code = main(["-q", "predict", str(image), "--modules", str(missing), "--out", str(tmp_path / "p.csv")])
    assert code == 2
    captured = capsys.readouterr()
    assert captured.err == f"mimir predict: error: module not found: {missing}\n"
    assert captured.out == ""


def test_a_bug_keeps_its_traceback(monkeypatch):
    from mimir.cli import catalog_cmd

    def broken(args):
        raise KeyError("a bug, not a user's mistake")

    monkeypatch.setattr(catalog_cmd, "run", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["catalog"])


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "mimir", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("mimir ")


def test_train_validation_file_holds_its_exams_out_of_training(tmp_path):
    from mimir.cli import UsageError
    from mimir.cli.train_cmd import _validation_split

    targets = tmp_path / "targets.csv"
    targets.write_text("eid,instance,height\n1000001,2,170\n1000002,2,180\n1000002,3,181\n1000003,2,160\n")
    validation = tmp_path / "validation.csv"
    validation.write_text("eid\n1000002\n")  # instance 2 by default
    train_ids, val_ids = _validation_split(targets, str(validation))
    assert list(zip(val_ids["eid"], val_ids["instance"], strict=True)) == [(1000002, 2)]
    assert list(zip(train_ids["eid"], train_ids["instance"], strict=True)) == [(1000001, 2), (1000002, 3), (1000003, 2)]
    assert _validation_split(targets, None) == (None, None)
    with pytest.raises(UsageError, match="does not exist"):
        _validation_split(targets, str(tmp_path / "missing.csv"))
