"""`mimir catalog`: list the targets MIMIR knows (no torch, instant)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "catalog",
        help="list the 72 catalog targets with UK Biobank fields, units, interval kinds and published metrics",
        description="List the catalog targets, optionally of one module, as a table or CSV.",
    )
    parser.add_argument("--module", help="only targets of this module (bodycomp, organs, experimental, age)")
    parser.add_argument("--csv", action="store_true", help="write CSV to standard output instead of a table")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import csv
    import sys

    from mimir.cli import UsageError
    from mimir.targets.catalog import catalog, module_names

    targets = catalog()
    if args.module:
        if args.module not in module_names():
            raise UsageError(f"unknown module {args.module!r}; choose from {', '.join(module_names())}")
        targets = tuple(t for t in targets if t.module == args.module)
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["module", "name", "ukb_field", "unit", "kind", "interval", "cv_icc", "cv_mae"])
        for t in targets:
            writer.writerow([t.module, t.name, t.ukb_field or "", t.unit, t.kind, t.interval, t.published["cv_icc"], t.published["cv_mae"]])
        return 0
    print(f"{'module':<13}{'name':<40}{'field':>7}  {'unit':<11}{'kind':<11}{'interval':<21}{'cv ICC':>7}")
    for t in targets:
        field = str(t.ukb_field) if t.ukb_field else "-"
        print(f"{t.module:<13}{t.name:<40}{field:>7}  {t.unit:<11}{t.kind:<11}{t.interval:<21}{t.published['cv_icc']:>7.3f}")
    print(f"{len(targets)} targets")
    return 0
