"""`mimir targets`: a UK Biobank tabular export -> the targets table training reads."""

from __future__ import annotations

import argparse

from mimir.cli import common_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "targets",
        help="turn a UK Biobank tabular export into a targets table (eid, instance, one column per target)",
        description=(
            "Read a UK Biobank export (ukbconv CSV with columns like 22407-2.0, or a Research Analysis "
            "Platform export with participant.p22407_i2 / p22407_i2; comma- or tab-separated) and write "
            "one row per eid with the catalog targets of one imaging instance, converted from each field's UK "
            "Biobank unit to the catalog's (DXA masses g -> kg; the pulse rate's two readings averaged; "
            "docs/targets_units.md)."
        ),
    )
    parser.add_argument("export", help="UK Biobank export file (.csv, .tsv, .tab, optionally .gz)")
    parser.add_argument("--out", required=True, help="targets table to write (CSV)")
    parser.add_argument(
        "--instance", type=int, default=2,
        help="imaging visit: 2 first (default), 3 repeat; another instance only if the export has field columns of it",
    )
    common_flags.add_force(parser, "the table at --out")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mimir.atomic import check_can_create, reported_write
    from mimir.cli import UsageError
    from mimir.targets.exports import export_to_targets, write_targets_table

    export = Path(args.export)
    out = Path(args.out)
    if not export.is_file():
        raise UsageError(f"no such export file: {export}")
    if args.instance < 0:
        raise UsageError(f"--instance must be a visit number (0-3), got {args.instance}")
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name")
    common_flags.check_replaceable([out], args.force)
    check_can_create(out)  # before reading what may be a large export
    table = export_to_targets(export, instance=args.instance)
    with reported_write(out, "nothing was written"):
        write_targets_table(table, out)
    names = [column for column in table.columns if column not in ("eid", "instance")]
    filled = int(table[names].notna().any(axis=0).sum())
    print(f"wrote {len(table)} participants x {filled} targets with values (instance {args.instance}) to {args.out}")
    return 0
