"""Models: timm backbones (backbone.py), heads (heads/), the classifier (classifier.py).

Submodules are imported explicitly (``from derm_exp.models.classifier import build_model``) so
that importing this package stays cheap (timm takes seconds to import).
"""
