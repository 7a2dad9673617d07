"""A synthetic cohort in the exact UK Biobank field-20201 format, with known ground truth."""

from mimir.synth.cohort import CohortConfig, CohortSummary, generate_cohort

__all__ = ["CohortConfig", "CohortSummary", "generate_cohort"]
