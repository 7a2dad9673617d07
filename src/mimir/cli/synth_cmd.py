"""`mimir synth`: a synthetic cohort in the exact UK Biobank field-20201 format."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="generate a synthetic cohort of field-20201 zips with known ground truth",
        description=(
            "Generate synthetic participants as UK Biobank field-20201 DICOM zips, with "
            "reference.csv (UK Biobank export style, realistic missingness), truth.csv "
            "(complete ground truth) and optional quirks and previews."
        ),
    )
    parser.add_argument("--n", type=int, required=True, help="number of participants")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same cohort)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--instance", type=int, default=2, choices=(2, 3), help="imaging visit (2 first, 3 repeat)")
    parser.add_argument(
        "--quirks",
        default="",
        help="comma-separated real-data quirks to inject on chosen subjects, or 'all' (see --list-quirks)",
    )
    parser.add_argument("--list-quirks", action="store_true", help="list the quirks and exit")
    parser.add_argument("--preview", action="store_true", help="write a coronal/sagittal PNG per subject")
    parser.add_argument("--on-grid", action="store_true", help="write every station on the common 3 mm grid")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
