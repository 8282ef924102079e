"""Explanations of a trained classifier: where it looks (research and education only).

Layer: above :mod:`derm_exp.inference`, below :mod:`derm_exp.training`. Heat maps show which
pixels moved the model's score for a class; they are not a segmentation of the lesion and not a
reason a clinician would accept (see README, "Explanations").

* :func:`explain_batch`: (B, H, W) maps in [0, 1] for a preprocessed batch;
* :func:`overlay`: a heat map blended over an image;
* :func:`explain_image`: one image through a :class:`~derm_exp.inference.SkinLesionPredictor`.
"""

from __future__ import annotations

from derm_exp.explanations.errors import ExplanationError
from derm_exp.explanations.image import Explanation, explain_image
from derm_exp.explanations.methods import METHODS, explain_batch
from derm_exp.explanations.overlay import overlay
from derm_exp.explanations.target_layer import find_target_layer

__all__ = [
    "METHODS",
    "Explanation",
    "ExplanationError",
    "explain_batch",
    "explain_image",
    "find_target_layer",
    "overlay",
]
