import subprocess
import sys

import pytest

from mimir.cli import COMMANDS, build_parser, main


def _subcommand_names() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return list(action.choices)


def test_every_command_module_registers_a_subcommand():
    assert len(_subcommand_names()) == len(COMMANDS)


@pytest.mark.parametrize("name", _subcommand_names())
def test_subcommand_help_works(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert name in capsys.readouterr().out


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


def test_catalog_unknown_module_is_a_usage_error(capsys):
    assert main(["catalog", "--module", "brain"]) == 2
    assert "unknown module 'brain'" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "mimir", "--version"], capture_output=True, text=True)
    assert result.returncode == 0
    assert result.stdout.startswith("mimir ")
