"""The 72 published MIMIR targets and UK Biobank tabular exports."""

from mimir.targets.catalog import Target, catalog, catalog_table, get_target, module_names, module_targets

__all__ = ["Target", "catalog", "catalog_table", "get_target", "module_names", "module_targets"]
