"""`mimir config`: the training configurations shipped with the package (no torch, instant).

`--config` of `mimir train` and `mimir crossval run` takes these names as well as TOML files;
`mimir config show NAME > my.toml` is the way to start a configuration of one's own.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="list the shipped training configurations, or print one as TOML",
        description="The training configurations shipped with MIMIR; give a name to --config of "
        "`mimir train` and `mimir crossval run`, or print one to start your own.",
    )
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="the names of the shipped configurations and what each is for")
    listing.set_defaults(handler=run_list)
    show = actions.add_parser("show", help="print a shipped configuration (TOML, with comments)")
    show.add_argument("name", metavar="NAME", help="a name from `mimir config list`")
    show.set_defaults(handler=run_show)


def _summary(text: str) -> str:
    """The first sentence of a configuration's opening comment: what it is for."""
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    return " ".join(comment).split(". ")[0].removesuffix(".")


def run_list(args: argparse.Namespace) -> int:
    from mimir.runs.config import shipped_config_text, shipped_configs

    names = shipped_configs()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {_summary(shipped_config_text(name))}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from mimir.runs.config import shipped_config_text

    print(shipped_config_text(args.name), end="")
    return 0
