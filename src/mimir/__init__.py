"""MIMIR: calibrated body measurements from UK Biobank neck-to-knee MRI."""

__version__ = "0.1.0"
