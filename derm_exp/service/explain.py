"""Heat maps for ``POST /predict`` with ``explain=true``: the explanation as a base64 PNG.

Research and education only; not a medical device.

The map comes from :func:`derm_exp.explanations.explain_image` (Grad-CAM by default) for the
predicted class, computed with the patient metadata the prediction used (a metadata-fusion
model). It covers the centre crop the model sees; the PNG is sized like the upload (at
most ``MAX_SIDE`` pixels a side) with the coloured map (matplotlib's ``jet``) placed on that
crop and transparent elsewhere, so the web page lays it over the whole image and an opacity
slider blends the two. An ensemble is explained through its first member.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from derm_exp.inference.predictor import SkinLesionPredictor
from derm_exp.service.limits import RequestError

MAX_SIDE = 512


def explanations_available() -> bool:
    """Whether :mod:`derm_exp.explanations` is part of this installation."""
    import importlib.util

    return importlib.util.find_spec("derm_exp.explanations") is not None


def explain(
    model: Any,
    image: Image.Image,
    method: str,
    target: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``{method, target_class, member, metadata_used, heatmap_png}`` for one RGB image and its
    patient ``metadata`` (runs the model; a metadata-fusion model is explained with it)."""
    if not explanations_available():
        raise RequestError(501, "explanations are not available in this installation")
    from derm_exp.explanations import explain_image

    predictor: SkinLesionPredictor = model.predictors[0] if hasattr(model, "predictors") else model
    member = model.members[0].name if hasattr(model, "members") else None
    if predictor.model is None:  # backend=onnxruntime: no torch graph to take gradients through
        raise RequestError(
            409,
            "explanations need the torch backend: this server runs ONNX Runtime "
            "(start it with backend=torch to get heat maps)",
        )
    from derm_exp.explanations.overlay import input_box

    result = explain_image(predictor, image, method=method, target=target, metadata=metadata)
    box = input_box(image.size, predictor.data_config)
    heatmap = np.asarray(result.heatmap, dtype=np.float64)
    return {
        "method": result.method,
        "target_class": result.target_class,
        "member": member,
        "metadata_used": bool(metadata) and predictor.metadata_encoder is not None,
        "heatmap_png": heatmap_png(heatmap, image.size, box),
    }


def heatmap_png(
    heatmap: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int] | None = None
) -> str:
    """A (H, W) map in [0, 1] as a ``data:image/png;base64,...`` RGBA image of ``size`` (W, H),
    the map stretched over ``box`` (left, top, right, bottom; None: the whole image)."""
    from matplotlib import colormaps

    scale = min(1.0, MAX_SIDE / max(size))
    box = box or (0, 0, size[0], size[1])
    left, top, right, bottom = (round(v * scale) for v in box)
    canvas = Image.new("RGBA", (max(1, round(size[0] * scale)), max(1, round(size[1] * scale))))
    values = np.clip(np.nan_to_num(heatmap, nan=0.0), 0.0, 1.0)
    gray = Image.fromarray(np.rint(values * 255).astype(np.uint8)).resize(
        (max(1, right - left), max(1, bottom - top)), Image.Resampling.BILINEAR
    )
    rgba = colormaps["jet"](np.asarray(gray, dtype=np.float64) / 255.0)
    canvas.paste(Image.fromarray(np.rint(rgba * 255).astype(np.uint8), "RGBA"), (left, top))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
