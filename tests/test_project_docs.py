"""The citation, the license and the README's command lines stay true to the package.

CITATION.cff must carry the keys that CFF 1.2.0 requires and pyproject's version; LICENSE must be
the license pyproject declares; every `mimir ...` line the README documents must be accepted by
the parsers users run (a renamed flag otherwise leaves the walk-through wrong without a sound).
PyYAML is not a dependency, so the few CITATION.cff keys checked are read with a small reader of
the YAML subset that the file is written in (top-level `key: value` and indented lists).
"""

from __future__ import annotations

import argparse
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from mimir.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CFF_REQUIRED = ("cff-version", "message", "title", "authors")
#: The first words of each license that pyproject may declare, as its standard text begins.
LICENSE_HEADINGS = {"MIT": "MIT License"}
PAPER_TITLE = "Deep Regression for Automated Analysis of UK Biobank Body MRI"
#: A documented value that stands for the user's own (FOLDER, M, N, ..., <path>).
PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*(\.\.\.)?|\.\.\.|<[^>]*>")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _cff_blocks(text: str) -> dict[str, tuple[str, list[str]]]:
    """Top-level key -> (inline value, its indented lines); comments and blank lines dropped."""
    blocks: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " -":
            assert current is not None, f"CITATION.cff:{number}: indented line before any key"
            blocks[current][1].append(line)
            continue
        match = re.fullmatch(r"([A-Za-z][A-Za-z0-9-]*):(?:\s+(.*))?", line)
        assert match, f"CITATION.cff:{number}: not a 'key: value' line: {line!r}"
        current = match.group(1)
        assert current not in blocks, f"CITATION.cff:{number}: key {current} given twice"
        blocks[current] = (_unquote(match.group(2) or ""), [])
    return blocks


def _nested(lines: list[str], key: str) -> str | None:
    """The value of `key:` among a block's indented lines (first occurrence)."""
    for line in lines:
        match = re.fullmatch(rf"\s*(?:-\s+)?{re.escape(key)}:\s+(.*)", line)
        if match:
            return _unquote(match.group(1))
    return None


def test_citation_file_has_the_required_cff_keys_and_the_package_version():
    blocks = _cff_blocks((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    missing = [key for key in CFF_REQUIRED if key not in blocks]
    assert not missing, f"CITATION.cff lacks {missing}"
    assert blocks["cff-version"][0] == "1.2.0"
    assert blocks["message"][0] and blocks["title"][0]
    authors = blocks["authors"][1]
    assert authors and authors[0].lstrip().startswith("- "), "authors must be a non-empty list"
    assert _nested(authors, "name") or _nested(authors, "family-names")
    assert blocks["version"][0] == _pyproject()["project"]["version"]
    assert blocks["license"][0] == _pyproject()["project"]["license"]["text"]


def test_citation_file_cites_the_method_paper_named_in_the_readme():
    blocks = _cff_blocks((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    _, paper = blocks["preferred-citation"]
    assert _nested(paper, "type") == "article"
    assert _nested(paper, "title") == PAPER_TITLE
    assert _nested(paper, "family-names") == "Langner"
    assert f'"{PAPER_TITLE}"' in README.read_text(encoding="utf-8").replace("\n", " ")


def test_license_file_is_the_license_pyproject_declares():
    declared = _pyproject()["project"]["license"]["text"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.splitlines()[0] == LICENSE_HEADINGS[declared]
    assert "Copyright (c) 2026 The MIMIR developers" in text
    assert "Permission is hereby granted, free of charge" in text


def _readme_shell_commands(text: str) -> list[list[str]]:
    """The `mimir ...` commands of the README's bash blocks, as argument lists after `mimir`."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|\|\||;|\|", line):
                words = shlex.split(part, comments=True)
                if words and words[0] == "mimir":
                    commands.append(words[1:])
    return commands


def _readme_code_spans(text: str) -> list[str]:
    """Inline `mimir ...` spans (headings and prose): command synopses with placeholders."""
    return [span for span in re.findall(r"`(mimir(?: [^`]*)?)`", text) if "\n" not in span]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def unknown_flags(span: str) -> list[str]:
    """Flags in a documented synopsis that the (sub)command it names does not accept.

    The command path is followed through the subparsers as far as its words name them; every
    `--flag` or `-f` after that, brackets and `|` alternatives opened, must be an option string
    of the deepest parser reached or of the top-level parser (`-v`, `-q` before the command).
    """
    top = build_parser()
    parser = top
    words = span.split()[1:]
    accepted = set(top._option_string_actions)
    for word in words:
        for name in re.split(r"[|]", word):
            child = _subparsers(parser).get(name)
            if child is not None:
                parser = child
                accepted |= set(child._option_string_actions)
                break
    flags = {
        token
        for word in words
        for token in re.split(r"[\[\]|]", word)
        if re.fullmatch(r"--?[A-Za-z][\w-]*", token)
    }
    return sorted(flags - accepted)


def test_readme_shell_commands_parse_with_the_cli():
    commands = _readme_shell_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 10, "the README's walk-through commands were not found"
    parser = build_parser()
    for words in commands:
        concrete = [word for word in words if not PLACEHOLDER.fullmatch(word)]
        if len(concrete) != len(words):
            continue
        try:
            parser.parse_args(words)
        except SystemExit as exit_info:
            pytest.fail(f"README command does not parse (exit {exit_info.code}): mimir {shlex.join(words)}")


def test_readme_command_synopses_name_only_accepted_flags():
    spans = _readme_code_spans(README.read_text(encoding="utf-8"))
    assert any(span.startswith("mimir predict ") for span in spans)
    wrong = {span: flags for span in spans if (flags := unknown_flags(span))}
    assert not wrong, f"README names flags the commands do not accept: {wrong}"


def test_synopsis_check_catches_a_flag_a_command_does_not_have():
    assert unknown_flags("mimir predict INPUT... --modules M... --out p.csv [--nope]") == ["--nope"]
    assert unknown_flags("mimir compress INPUT --cache DIR [--long]") == ["--long"]
    assert unknown_flags("mimir -v COMMAND") == []
