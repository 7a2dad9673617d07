"""A synthetic cohort in the exact UK Biobank field-20201 format, with known ground truth.

`from mimir.synth import generate_cohort, CohortConfig` is the Python API; the names are
resolved lazily so that importing one synth module does not import them all.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CohortConfig", "CohortSummary", "generate_cohort"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mimir.synth import cohort

        return getattr(cohort, name)
    raise AttributeError(f"module 'mimir.synth' has no attribute {name!r}")
