"""HAM10000-format data: metadata validation, lesion-aware splits, transforms, datasets, demo data.

Modules are imported directly (``from derm_exp.data.metadata import load_metadata``) so light
tools such as ``prepare_data`` do not pay for importing torch.
"""
