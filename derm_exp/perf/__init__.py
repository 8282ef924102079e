"""Measurements behind ``python -m derm_exp.benchmark``: timing helpers, loader, training and
inference benchmarks, and the report (table + JSON)."""
