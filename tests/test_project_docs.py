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

from mimir.cli import build_parser, parse_arguments

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


#: The images that containers/ builds, whose entry point is `mimir`.
CONTAINER_IMAGE = re.compile(r"mimir-(?:cuda|cpu)\.sif|mimir:(?:cuda|cpu)")


def _mimir_arguments(words: list[str]) -> list[str] | None:
    """The arguments of `mimir` in a shell command: after `mimir`, or after the image of an
    `apptainer run` / `docker run` of containers/ (whose entry point is `mimir`); None for others."""
    if words and words[0] == "mimir":
        return words[1:]
    if words[:2] in (["apptainer", "run"], ["docker", "run"]):
        for index, word in enumerate(words):
            if CONTAINER_IMAGE.fullmatch(word):
                return words[index + 1:]
    return None


def _readme_shell_commands(text: str) -> list[list[str]]:
    """The `mimir ...` commands of the README's bash blocks, as argument lists after `mimir`."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            for words in _simple_commands(line):
                arguments = _mimir_arguments(words)
                if arguments is not None:
                    commands.append(arguments)
    return commands


def _simple_commands(line: str) -> list[list[str]]:
    """The words of each command of a shell line, split at `&&`, `||`, `;` and `|` outside quotes."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [words for words in commands if words]


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
            parse_arguments(parser, words)
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


CONTAINERS = ROOT / "containers"
HPC = ROOT / "docs" / "hpc.md"
#: The torch and torchvision versions the project is tested with (the containers pin them).
TESTED_TORCH = {"torch": "2.14.1", "torchvision": "0.29.1"}


def _dockerfile_sources(text: str) -> list[str]:
    """The host paths that the Dockerfile's COPY lines take from the build context."""
    return [path for line in re.findall(r"^COPY\s+(.*)$", text, flags=re.MULTILINE) for path in line.split()[:-1]]


def _definition_section(text: str, name: str) -> list[str]:
    """The non-empty lines of one %section of an Apptainer definition."""
    match = re.search(rf"^%{name}\s*\n(.*?)(?=^%|\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert match, f"containers/mimir.def has no %{name} section"
    return [line.strip() for line in match.group(1).splitlines() if line.strip() and not line.strip().startswith("#")]


def _project_installs(text: str) -> list[str]:
    """The targets of `pip install` commands that install this repository (`.`, `'.[extra]'`)."""
    targets = [_unquote(word) for word in re.findall(r"pip install (?:-e )?([^\s;&|]+)", text)]
    return [target for target in targets if re.fullmatch(r"\.(\[[\w,]+\])?", target)]


def test_containers_copy_existing_files_and_install_the_package_as_the_readme_does():
    from packaging.requirements import Requirement

    dockerfile = (CONTAINERS / "Dockerfile").read_text(encoding="utf-8")
    definition = (CONTAINERS / "mimir.def").read_text(encoding="utf-8")
    copied = {
        "Dockerfile": _dockerfile_sources(dockerfile),
        "mimir.def": [line.split()[0] for line in _definition_section(definition, "files")],
    }
    project = _pyproject()["project"]
    for name, sources in copied.items():
        assert [path for path in sources if not (ROOT / path).exists()] == [], f"{name} copies missing files"
        assert {"pyproject.toml", project["readme"], "src"} <= set(sources), f"{name} lacks what pip install . needs"
    readme_installs = _project_installs(README.read_text(encoding="utf-8"))
    assert readme_installs, "the README no longer installs the package with pip install"
    extras = set(project["optional-dependencies"])
    pins = {requirement.name: requirement.specifier for requirement in map(Requirement, project["dependencies"])}
    for name, text in (("Dockerfile", dockerfile), ("mimir.def", definition)):
        installs = _project_installs(text)
        assert installs, f"{name} does not install the package from the repository"
        for target in installs + readme_installs:
            named = set(re.findall(r"\w+", target.strip(".[]")))
            assert named <= extras, f"{name}: unknown extras {named - extras}"
        for package, version in TESTED_TORCH.items():
            assert re.search(rf"{package.upper()}_VERSION={re.escape(version)}\b", text), f"{name} does not pin {package}"
            assert pins[package].contains(version), f"pyproject's {package} range excludes the pinned {version}"
        for variant in ("cuda", "cpu"):
            assert re.search(rf"^\s*{variant}\) index=", text, flags=re.MULTILINE), f"{name} lacks the {variant} variant"
    assert re.search(r'^ENTRYPOINT \["mimir"\]$', dockerfile, flags=re.MULTILINE)
    assert _definition_section(definition, "runscript") == ['exec mimir "$@"']
    assert "mimir" in _pyproject()["project"]["scripts"]


def test_hpc_doc_commands_parse_and_name_existing_container_files():
    text = HPC.read_text(encoding="utf-8")
    for path in set(re.findall(r"containers/[\w.-]+", text)):
        assert (ROOT / path).is_file(), f"docs/hpc.md names {path}, which does not exist"
    commands = _readme_shell_commands(text)
    assert len(commands) >= 7, "the commands of docs/hpc.md were not found"
    parser = build_parser()
    for words in commands:
        concrete = [re.sub(r"\$\w+", "0", word) for word in words]  # job variables stand for numbers
        try:
            parse_arguments(parser, concrete)
        except SystemExit as exit_info:
            if exit_info.code != 0:  # --version and --help exit 0
                pytest.fail(f"docs/hpc.md command does not parse (exit {exit_info.code}): mimir {shlex.join(words)}")


def test_command_extraction_follows_container_entry_points():
    apptainer = ["apptainer", "run", "--nv", "--bind", "/d:/d:ro", "mimir-cuda.sif", "predict", "x"]
    assert _mimir_arguments(apptainer) == ["predict", "x"]
    assert _mimir_arguments(["docker", "run", "--rm", "mimir:cpu", "--version"]) == ["--version"]
    assert _mimir_arguments(["apptainer", "exec", "mimir-cuda.sif", "python"]) is None
    assert _mimir_arguments(["mimir", "catalog"]) == ["catalog"]
    assert _simple_commands('ls x && mimir targets "a b.csv" --out t.csv; python -c "import a; a.b()" # note') == [
        ["ls", "x"], ["mimir", "targets", "a b.csv", "--out", "t.csv"], ["python", "-c", "import a; a.b()"],
    ]
