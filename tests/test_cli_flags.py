"""Flags shared by several commands mean one thing everywhere (`mimir.cli.common_flags`); renamed
flags keep their old spelling as hidden aliases; -q/-v work before and after the subcommand."""

import argparse
import logging
import re
import subprocess
import sys

import pandas as pd
import pytest

from mimir.cli import build_parser, catalog_cmd, main
from mimir.cli.common_flags import MEANINGS, subparsers_of

#: Old spelling -> the flag it now is, per the rename of issue 17 (hidden, one release).
RENAMED = {"--images": "--cache", "--overwrite": "--force", "--workers": "--loader-workers"}
#: compress's split over machines before it went by exam id: two flags that make one --part.
RENAMED.update({"--num-parts": "--part", "--part-id": "--part"})


def _parsers() -> dict[str, argparse.ArgumentParser]:
    top = build_parser()
    return {"mimir": top, **{parser.prog: parser for parser in subparsers_of(top)}}


def _hidden(action: argparse.Action) -> bool:
    return action.help == argparse.SUPPRESS


def test_every_shared_flag_has_its_one_meaning_in_every_command():
    seen = set()
    for prog, parser in _parsers().items():
        for action in parser._actions:
            for flag in action.option_strings:
                if flag in MEANINGS and not _hidden(action):
                    assert action.help.startswith(MEANINGS[flag]), (prog, flag, action.help)
                    seen.add(flag)
    assert seen == set(MEANINGS)  # every shared flag is in use somewhere


def test_the_only_hidden_flags_are_the_old_spellings_of_renamed_ones():
    for prog, parser in _parsers().items():
        for action in parser._actions:
            if _hidden(action) and action.option_strings:
                (old,) = action.option_strings
                assert RENAMED.get(old) == action.target.option_strings[-1], (prog, old)


def test_no_command_spells_a_shared_meaning_otherwise():
    """A visible --images or --overwrite would be the drift this module exists to stop."""
    for prog, parser in _parsers().items():
        visible = {flag for action in parser._actions if not _hidden(action) for flag in action.option_strings}
        assert not visible & {"--images", "--overwrite"}, prog


@pytest.mark.parametrize("command", ["compress", "predict", "show", "train", "crossval run"])
def test_the_cache_is_called_cache(command):
    assert "--cache" in _parsers()[f"mimir {command}"]._option_string_actions


@pytest.mark.parametrize(
    "argv, dest, value",
    [
        (["train", "--images", "C", "--targets", "T", "--module", "age", "--out", "O"], "cache", "C"),
        (["crossval", "run", "--images", "C", "--targets", "T", "--module", "age", "--out", "O"], "cache", "C"),
        (["train", "--cache", "C", "--targets", "T", "--module", "age", "--out", "O", "--workers", "3"], "loader_workers", 3),
        (["crossval", "run", "--cache", "C", "--targets", "T", "--module", "age", "--out", "O", "--workers", "3"], "loader_workers", 3),
        (["module", "build", "--run", "R", "--out", "O", "--overwrite"], "force", True),
        (["module", "import-legacy", "F", "--out", "O", "--overwrite"], "force", True),
    ],
    ids=["train --images", "crossval --images", "train --workers", "crossval --workers", "build --overwrite", "import --overwrite"],
)
def test_old_spellings_still_work(argv, dest, value):
    args = build_parser().parse_args(argv)
    assert getattr(args, dest) == value


def test_compress_old_part_flags_make_one_part_and_do_not_mix_with_part():
    from mimir.cli.common_flags import PartFlagError, part_of
    from mimir.parallel import Part

    parse = build_parser().parse_args
    args = parse(["compress", "x.zip", "--cache", "C", "--num-parts", "4", "--part-id", "3"])
    assert part_of(args) == Part(3, 4) and ("--num-parts", "--part") in args.renamed_flags
    assert part_of(parse(["compress", "x.zip", "--cache", "C", "--part", "1/4"])) == Part(1, 4)
    assert part_of(parse(["compress", "x.zip", "--cache", "C"])) is None
    with pytest.raises(PartFlagError, match="alone"):
        part_of(parse(["compress", "x.zip", "--cache", "C", "--part", "1/4", "--num-parts", "4"]))
    with pytest.raises(PartFlagError, match="does not exist"):
        part_of(parse(["compress", "x.zip", "--cache", "C", "--num-parts", "4", "--part-id", "4"]))


def test_an_old_spelling_is_a_warning_naming_the_new_flag(tmp_path, caplog):
    missing = tmp_path / "no_run"
    with caplog.at_level(logging.WARNING):
        assert main(["-q", "module", "build", "--run", str(missing), "--out", str(tmp_path / "m"), "--overwrite"]) == 2
    assert "--overwrite is now called --force" in caplog.text


def test_train_refuses_both_spellings_at_once(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--cache", "A", "--images", "B", "--targets", "T", "--module", "age", "--out", "O"])
    assert exit_info.value.code == 2
    assert "--images: not allowed with argument --cache" in capsys.readouterr().err


@pytest.fixture
def seen_args(monkeypatch):
    """The namespace a command's handler receives (catalog stands in for any command)."""
    seen = []
    monkeypatch.setattr(catalog_cmd, "run", lambda args: seen.append(args) or 0)
    return seen


@pytest.mark.parametrize(
    "argv, quiet, verbose",
    [
        (["catalog"], False, 0),
        (["-q", "catalog"], True, 0),
        (["catalog", "-q"], True, 0),
        (["-v", "catalog"], False, 1),
        (["catalog", "-vv"], False, 2),
        (["-q", "catalog", "-v"], True, 1),
    ],
)
def test_quiet_and_verbose_work_before_and_after_the_subcommand(seen_args, argv, quiet, verbose):
    assert main(argv) == 0
    assert (seen_args[0].quiet, seen_args[0].verbose) == (quiet, verbose)


@pytest.mark.parametrize("prog", sorted(set(_parsers()) - {"mimir"}))
def test_every_subcommand_takes_quiet_after_it(prog):
    parser = _parsers()[prog]
    assert {"-q", "--quiet", "-v", "--verbose"} <= set(parser._option_string_actions), prog


def test_quiet_after_a_nested_action(tmp_path):
    args = build_parser().parse_args(["crossval", "merge", str(tmp_path), "-q"])
    assert args.quiet is True and args.verbose == 0


# --force: replacing an output is asked for, never silent ---------------------------------------
@pytest.fixture
def tables(tmp_path):
    reference = pd.DataFrame({"eid": [1000001, 1000002, 1000003], "instance": 2, "height": [170.0, 180.0, 165.0]})
    predictions = reference.assign(height=reference["height"] + 1.0, height_sd=2.0)
    predictions_path, reference_path = tmp_path / "predictions.csv", tmp_path / "reference.csv"
    predictions.to_csv(predictions_path, index=False)
    reference.to_csv(reference_path, index=False)
    return predictions_path, reference_path


def _one_error_line(capsys, command: str) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mimir {command}: error: "), lines
    return lines[0]


def test_evaluate_into_an_earlier_evaluation_needs_force(tmp_path, tables, capsys):
    predictions, reference = tables
    out = tmp_path / "eval"
    argv = ["-q", "evaluate", str(predictions), str(reference), "--out", str(out), "--no-report"]
    assert main(argv) == 0
    (out / "metrics.csv").write_text("mine\n")
    capsys.readouterr()
    assert main(argv) == 2
    line = _one_error_line(capsys, "evaluate")
    assert str(out / "metrics.csv") in line and "pass --force" in line
    assert (out / "metrics.csv").read_text() == "mine\n"
    assert main([*argv, "--force"]) == 0
    assert (out / "metrics.csv").read_text() != "mine\n"


def test_targets_over_an_existing_table_needs_force(tmp_path, capsys):
    export = tmp_path / "export.csv"
    export.write_text("eid,age\n1000001,61\n")
    out = tmp_path / "targets.csv"
    out.write_text("mine\n")
    assert main(["-q", "targets", str(export), "--out", str(out)]) == 2
    assert "pass --force" in _one_error_line(capsys, "targets")
    assert out.read_text() == "mine\n"
    assert main(["-q", "targets", str(export), "--out", str(out), "--force"]) == 0
    assert "1000001" in out.read_text()


def test_predict_over_an_existing_table_is_refused_before_any_work(tmp_path, capsys):
    np = pytest.importorskip("numpy")
    image = tmp_path / "1234567_20201_2_0.npy"
    np.save(image, np.zeros((3, 256, 256), dtype=np.uint8))
    out = tmp_path / "p.csv"
    out.write_text("mine\n")
    assert main(["-q", "predict", str(image), "--modules", str(tmp_path / "no_module"), "--out", str(out)]) == 2
    line = _one_error_line(capsys, "predict")
    assert str(out) in line and "pass --force" in line and out.read_text() == "mine\n"
    # with --force the next check is reached: the missing module, not the existing table
    assert main(["-q", "predict", str(image), "--modules", str(tmp_path / "no_module"), "--out", str(out), "--force"]) == 2
    assert "module not found" in _one_error_line(capsys, "predict")


def test_show_over_an_existing_figure_needs_force(tmp_path, tables, capsys):
    predictions, _ = tables
    out = tmp_path / "figure.png"
    out.write_bytes(b"mine")
    assert main(["-q", "show", "1000001_20201_2_0", "--predictions", str(predictions), "--out", str(out)]) == 2
    assert "pass --force" in _one_error_line(capsys, "show")
    assert out.read_bytes() == b"mine"


@pytest.mark.parametrize("action", [["build", "--run"], ["import-legacy"]], ids=["build", "import-legacy"])
def test_a_module_over_an_existing_one_needs_force(tmp_path, capsys, action):
    out = tmp_path / "module"
    out.mkdir()
    (out / "module.json").write_text("{}")
    argv = ["-q", "module", *action, str(tmp_path / "no_source"), "--out", str(out)]
    assert main(argv) == 2
    assert f"{out} exists already; pass --force" in _one_error_line(capsys, "module")
    assert main([*argv, "--force"]) == 2  # the next check: the missing run or folder
    assert "pass --force" not in _one_error_line(capsys, "module")
    assert (out / "module.json").read_text() == "{}"


# shipped configurations -------------------------------------------------------------------------
def test_config_list_names_every_shipped_config(capsys):
    assert main(["config", "list"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == ["cpu-small", "paper", "tiny"]


def test_config_show_prints_the_toml_with_its_comments(capsys):
    import tomllib

    from mimir.runs.config import TrainConfig

    assert main(["config", "show", "paper"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# The published MIMIR training settings")
    assert TrainConfig.from_dict(tomllib.loads(text)) == TrainConfig.load("paper")


def test_config_show_of_an_unknown_name_is_one_line(capsys):
    assert main(["config", "show", "papr"]) == 2
    line = _one_error_line(capsys, "config")
    assert "'papr'" in line and "cpu-small, paper, tiny" in line


def test_config_commands_do_not_import_torch():
    code = (
        "import sys\n"
        "from mimir.cli import main\n"
        "main(['config', 'list'])\n"
        "main(['config', 'show', 'paper'])\n"
        "assert 'torch' not in sys.modules, 'torch imported by mimir config'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("command", [["train"], ["crossval", "run"]])
def test_config_takes_a_shipped_name(tmp_path, capsys, command):
    """The shipped config loads (the command goes on to the next check: the missing cache)."""
    argv = [*command, "--config", "tiny", "--cache", str(tmp_path / "none"), "--targets", str(tmp_path),
            "--module", "age", "--out", str(tmp_path / "out")]
    assert main(["-q", *argv]) == 2
    assert "--cache" in _one_error_line(capsys, command[0]) and not (tmp_path / "out").exists()


def test_config_neither_a_file_nor_a_shipped_name_is_one_line(tmp_path, capsys):
    argv = ["train", "--config", "configs/paper.toml", "--cache", str(tmp_path), "--targets", str(tmp_path),
            "--module", "age", "--out", str(tmp_path / "out")]
    assert main(["-q", *argv]) == 2
    line = _one_error_line(capsys, "train")
    assert "configs/paper.toml" in line and "shipped: cpu-small, paper, tiny" in line


def test_the_readme_and_docs_use_the_new_names():
    """Old spellings are for scripts written before the rename, not for new readers."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for old in ("--images", "--overwrite"):  # named only where the rename is explained
            assert not [line for line in text.splitlines() if old in line and "is `--" not in line], (path.name, old)
        assert not re.search(r"configs/[\w-]+\.toml", text), path.name  # shipped configs go by name


def test_predict_over_an_existing_data_dictionary_is_refused_too(tmp_path, capsys):
    """The table and its dictionary are written together: a dictionary left from another run
    would otherwise be replaced without --force."""
    np = pytest.importorskip("numpy")
    image = tmp_path / "1234567_20201_2_0.npy"
    np.save(image, np.zeros((3, 256, 256), dtype=np.uint8))
    dictionary = tmp_path / "p_dictionary.json"
    dictionary.write_text("{}\n")
    argv = ["-q", "predict", str(image), "--modules", str(tmp_path / "no_module"), "--out", str(tmp_path / "p.csv")]
    assert main(argv) == 2
    line = _one_error_line(capsys, "predict")
    assert str(dictionary) in line and "pass --force" in line and dictionary.read_text() == "{}\n"


@pytest.mark.parametrize("argv, flag", [
    (["predict", "X", "--modules", "M", "--out", "p.csv", "--batch-size", "0"], "--batch-size"),
    (["predict", "X", "--modules", "M", "--out", "p.csv", "--members", "0"], "--members"),
    (["predict", "X", "--modules", "M", "--out", "p.csv", "--workers", "-1"], "--workers"),
    (["explain", "X", "--modules", "M", "--out", "E", "--batch-size", "0"], "--batch-size"),
    (["module", "calibrate", "M", "X", "--reference", "R", "--out", "O", "--batch-size", "0"], "--batch-size"),
    (["compress", "X", "--cache", "C", "--workers", "0"], "--workers"),
    (["synth", "--n", "2", "--out", "S", "--workers", "0"], "--workers"),
])
def test_counts_below_one_are_refused_while_parsing(argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    value = argv[argv.index(flag) + 1]
    assert f"argument {flag}: must be at least 1, got {value}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_a_count_that_is_not_a_number_says_so(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "X", "--modules", "M", "--out", "p.csv", "--batch-size", "many"])
    assert "argument --batch-size: expected a whole number, got 'many'" in capsys.readouterr().err
