"""MLflow pyfunc wrappers: a registered classifier (or ensemble) loadable with ``mlflow.pyfunc``.

Research and education only: not a medical device; never use it for diagnosis.

Usage::

    import mlflow, pandas as pd
    model = mlflow.pyfunc.load_model("models:/derm-classifier@seed-7")   # or .../3, .../latest
    probs = model.predict(pd.DataFrame({"image": ["a.jpg", "b.png"]}))
    # probs: DataFrame, one row per image, one column per class in the checkpoint's class order
    # (akiec, bcc, bkl, df, mel, nv, vasc); rows sum to 1 (temperature-calibrated softmax);
    # probs.attrs["disclaimer"] carries the research-only disclaimer. Two more columns:
    # "decision" ("predict" | "abstain") and "reasons" (a list of codes, empty when predicting;
    # see derm_exp.inference.abstention): probs.iloc[:, :7] are the probabilities alone.

Input format (one image per row, images of any size: each is resized and centre-cropped exactly
as at training time, from the checkpoint's own preprocessing config):

* a pandas DataFrame with a column ``image`` (or a single column of any name) whose cells are
  file paths, raw encoded image bytes (JPEG/PNG/...), base64 strings of such bytes (standard or
  URL-safe alphabet, line breaks allowed), or ``data:image/...;base64,...`` URIs;
* or a plain list (or 1-D array / Series) of the same.

Patient metadata for a metadata-fusion model: DataFrame columns ``age``, ``sex`` and/or
``localization`` beside ``image`` (an empty/NaN cell is "not known"), e.g.
``pd.DataFrame({"image": ["a.jpg"], "age": [55], "sex": ["male"], "localization": ["back"]})``.
Image-only models ignore them.

A string is read as a data URI when it starts with ``data:``, else as a path when that file
exists, else as base64; anything else is a :class:`~derm_exp.errors.PredictionInputError` naming
the row.

Loading unpickles nothing: the model is logged "from code" (a three-line script that imports a
class below; settings are artifacts), and ``load_context`` rebuilds the network
from the checkpoint's saved config and a ``weights_only`` state_dict via
:class:`derm_exp.inference.predictor.SkinLesionPredictor`. derm_exp must be installed where the
model is loaded.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import re
import tempfile
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from PIL import Image

from derm_exp.data.images import BadImageError, load_image
from derm_exp.data.metadata_encoding import METADATA_COLUMNS
from derm_exp.errors import PredictionInputError
from derm_exp.inference.predictor import DISCLAIMER

IMAGE_COLUMN = "image"
_URLSAFE = str.maketrans("-_", "+/")


def _image(data: bytes, index: int, what: str) -> Image.Image:
    """Decode encoded image bytes exactly as the dataset opens files."""
    try:
        return load_image(io.BytesIO(data))  # type: ignore[arg-type]  # PIL reads file objects
    except BadImageError as exc:
        cause = exc.__cause__ or exc
        reason = re.sub(r"\s*<_io\.BytesIO object at \w+>", "", str(cause))
        raise PredictionInputError(
            f"image {index}: {what} is not a readable image ({type(cause).__name__}: {reason})"
        ) from None


def _from_data_uri(text: str, index: int) -> Image.Image:
    """``data:[<media type>][;base64],<payload>`` (RFC 2397) -> the image it holds."""
    header, sep, payload = text.partition(",")
    if not sep:
        raise PredictionInputError(f"image {index}: data URI {text[:40]!r}... has no ',' payload")
    if header.lower().endswith(";base64"):
        data = _b64(urllib.parse.unquote(payload))
        if data is None:
            raise PredictionInputError(
                f"image {index}: the payload of data URI {header!r} is not valid base64"
            )
    else:  # a percent-encoded payload
        data = urllib.parse.unquote_to_bytes(payload)
    return _image(data, index, f"data URI {header!r}")


def _b64(text: str) -> bytes | None:
    """Bytes of standard or URL-safe base64 (line breaks and missing padding tolerated)."""
    compact = "".join(text.split()).translate(_URLSAFE)
    if not compact:
        return None
    try:
        return base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _from_text(text: str, index: int) -> str | Image.Image:
    """A string cell: a data URI, an existing file path, or raw base64, in that order.

    ``os.path.isfile`` (not ``Path.is_file``) because a long base64 string is no valid file name:
    ``Path.is_file`` raises ``OSError: File name too long`` for it, ``os.path.isfile`` says False.
    """
    stripped = text.strip()
    if stripped[:5].lower() == "data:":
        return _from_data_uri(stripped, index)
    path = os.path.expanduser(text)
    if os.path.isfile(path):
        return path
    data = _b64(stripped)
    if data is None:
        raise PredictionInputError(
            f"image {index}: {text[:80]!r} is neither an existing file nor base64-encoded image "
            "bytes (raw base64 or a data:image/...;base64,... URI)"
        )
    return _image(data, index, f"{text[:40]!r} is not an existing file, and as base64 it")


def _decode(item: Any, index: int) -> Any:
    """One input cell -> a path string, a PIL image or an array (what the predictor accepts).

    Cells: PIL images and arrays as they are; paths; encoded image bytes; base64 or a data URI
    (as ``str``, or as ASCII ``bytes``).
    """
    if isinstance(item, Image.Image | np.ndarray):
        return item
    if isinstance(item, os.PathLike):
        item = os.fspath(item)
    if isinstance(item, bytes | bytearray | memoryview):
        data = bytes(item)
        if not data.isascii():  # every encoded image format we read has binary bytes
            return _image(data, index, f"{len(data)} bytes")
        try:
            return _from_text(data.decode("ascii"), index)
        except PredictionInputError:
            return _image(data, index, f"{len(data)} bytes")  # e.g. an ASCII PGM
    if isinstance(item, str):
        return _from_text(item, index)
    if item is None or (isinstance(item, float) and np.isnan(item)):
        raise PredictionInputError(f"image {index}: empty cell")
    raise PredictionInputError(
        f"image {index}: unsupported type {type(item).__name__}; give a file path, encoded "
        "image bytes or a base64 string"
    )


def images_from_input(model_input: Any) -> list[Any]:
    """Decode a pyfunc input (see the module docstring) into a list the predictor accepts."""
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN in model_input.columns:
            column = model_input[IMAGE_COLUMN]
        elif model_input.shape[1] == 1:
            column = model_input.iloc[:, 0]
        else:
            raise PredictionInputError(
                f"expected a DataFrame with a column '{IMAGE_COLUMN}', got columns "
                f"{list(model_input.columns)}"
            )
        items: Sequence[Any] = column.tolist()
    elif isinstance(model_input, pd.Series | np.ndarray) and np.ndim(model_input) == 1:
        items = list(model_input)
    elif isinstance(model_input, str | bytes | Path | Image.Image):
        items = [model_input]
    elif isinstance(model_input, Sequence):
        items = list(model_input)
    else:
        raise PredictionInputError(
            f"unsupported model input {type(model_input).__name__}; give a DataFrame with a "
            f"column '{IMAGE_COLUMN}' or a list of image paths / bytes / base64 strings"
        )
    return [_decode(item, i) for i, item in enumerate(items)]


def metadata_from_input(model_input: Any) -> list[dict[str, Any] | None] | None:
    """One metadata dict per row from a DataFrame's age/sex/localization columns (NaN cells
    left out: not known); None when the input has none of them."""
    if not isinstance(model_input, pd.DataFrame):
        return None
    fields = [c for c in METADATA_COLUMNS if c in model_input.columns]
    if not fields:
        return None
    rows = model_input[fields].astype(object).where(model_input[fields].notna(), None)
    return [{k: v for k, v in rec.items() if v is not None} for rec in rows.to_dict("records")]


class DermClassifierModel(mlflow.pyfunc.PythonModel):
    """One derm_exp checkpoint (artifact ``checkpoint``) served through the predictor.

    Runs on ``device="auto"`` (CUDA > MPS > CPU) with the checkpoint's temperature. For other
    settings use ``SkinLesionPredictor.from_registry(uri, device=..., calibrate=...)``.
    """

    def load_context(self, context: Any) -> None:
        from derm_exp.inference.predictor import SkinLesionPredictor

        self._predictor = SkinLesionPredictor.from_checkpoint(
            context.artifacts["checkpoint"], device="auto", calibrate=True
        )

    @property
    def classes(self) -> list[str]:
        return list(self._predictor.classes)

    # MLflow neither validates nor converts a ``pd.DataFrame``-hinted input (any other hint is
    # turned into a schema that cannot express "path, bytes or base64"); lists pass unchanged.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        """Class probabilities (N, C) as a DataFrame with one column per class, then
        ``decision`` and ``reasons`` (:mod:`derm_exp.inference.abstention`)."""
        images, metadata = images_from_input(model_input), metadata_from_input(model_input)
        results = self._predictor.predict_batch(images, metadata=metadata)
        return decision_frame(results, self.classes)


class DermEnsembleModel(mlflow.pyfunc.PythonModel):
    """An ensemble of derm_exp checkpoints (artifacts ``member_0``, ``member_1``, ...).

    Artifact ``ensemble`` (JSON) holds ``names`` (one per member), ``aggregation`` and
    ``weights`` (or null); members run on ``device="auto"``, calibrated.
    ``predict`` returns the ensemble probabilities per class followed by the columns
    ``confidence``, ``std``, ``entropy``, ``mutual_information`` and ``disagreement`` (see
    :mod:`derm_exp.inference.aggregation`).
    """

    def load_context(self, context: Any) -> None:
        from derm_exp.inference.ensemble import EnsemblePredictor

        spec = ensemble_spec(context.artifacts)
        self._ensemble = EnsemblePredictor.from_checkpoints(
            spec.paths,
            names=spec.names,
            aggregation=spec.aggregation,
            weights=spec.weights,
            device="auto",
            calibrate=True,
        )

    # the type hint: see DermClassifierModel.predict
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict | None = None
    ) -> pd.DataFrame:
        """Ensemble probabilities, uncertainty, ``decision`` and ``reasons`` per image."""
        images, metadata = images_from_input(model_input), metadata_from_input(model_input)
        results = self._ensemble.predict(images, metadata=metadata)
        keys = ("confidence", "std", "entropy", "mutual_information", "disagreement")
        return decision_frame(results, self._ensemble.classes, keys)


def decision_frame(
    results: Sequence[Mapping[str, Any]], classes: Sequence[str], keys: Sequence[str] = ()
) -> pd.DataFrame:
    """One row per prediction dict: its probabilities per class, ``keys``, then ``decision``
    and ``reasons`` (a list of codes); ``attrs["disclaimer"]`` set."""
    frame = pd.DataFrame(
        np.array(
            [[r["probabilities"][c] for c in classes] for r in results], dtype=np.float64
        ).reshape(len(results), len(classes)),
        columns=list(classes),
    )
    for key in keys:
        frame[key] = [float(r[key]) for r in results]
    frame["decision"] = [r["decision"] for r in results]
    frame["reasons"] = [list(r["reasons"]) for r in results]
    frame.attrs["disclaimer"] = DISCLAIMER
    return frame


@dataclass(frozen=True)
class EnsembleSpec:
    """What a registered ensemble is made of: member names and checkpoint files, aggregation
    and (for ``weighted_mean``) the weights it was registered with."""

    names: list[str]
    paths: list[str]
    aggregation: str
    weights: list[float] | None


def ensemble_spec(artifacts: Mapping[str, str]) -> EnsembleSpec:
    """The :class:`EnsembleSpec` of a :class:`DermEnsembleModel`'s artifacts (name -> file)."""
    spec = json.loads(Path(artifacts["ensemble"]).read_text())
    names = [str(n) for n in spec["names"]]
    paths = [str(artifacts[f"member_{i}"]) for i in range(len(names))]
    return EnsembleSpec(names, paths, str(spec["aggregation"]), spec.get("weights"))


def model_artifacts(model_dir: str | Path) -> dict[str, str]:
    """Artifact name -> local file of a logged pyfunc model directory (read from its MLmodel)."""
    from mlflow.models import Model

    flavor = Model.load(str(Path(model_dir) / "MLmodel")).flavors.get("python_function", {})
    return {
        name: str(Path(model_dir) / entry["path"])
        for name, entry in (flavor.get("artifacts") or {}).items()
    }


# MLflow "models from code": the logged model stores this small script instead of a pickle.
_ENTRY = """# derm_exp pyfunc entry point (MLflow models-from-code); research/education only.
import mlflow

from derm_exp.inference.pyfunc_model import {cls}

mlflow.models.set_model({cls}())
"""


def pip_requirements() -> list[str]:
    """``name==version`` of the distributions a loaded model imports, as installed here.

    Listing them skips MLflow's requirement inference (it loads the model in a subprocess).
    derm_exp itself must be installed where the model is loaded (``pip install -e .``).
    """
    from importlib import metadata

    out = []
    for name in (
        "torch",
        "torchvision",
        "timm",
        "omegaconf",
        "hydra-core",
        "pillow",
        "numpy",
        "pandas",
        "scikit-learn",
        "mlflow",
    ):
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return out


def log_pyfunc_model(
    model_class: type[mlflow.pyfunc.PythonModel], artifacts: dict[str, str], name: str = "model"
) -> Any:
    """Log ``model_class`` (one of the classes above) with file ``artifacts`` to the active run.

    Settings travel as artifacts, not ``model_config`` (MLflow would log that as run params,
    clashing with the training config's ``device``). Returns MLflow's ``ModelInfo``.
    """
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    # MLflow warns that a DataFrame type hint gives no signature: intended (see predict).
    pyfunc_log.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            entry = Path(tmp) / "derm_exp_model.py"
            entry.write_text(_ENTRY.format(cls=model_class.__name__))
            return mlflow.pyfunc.log_model(
                name=name,
                python_model=str(entry),
                artifacts=artifacts,
                pip_requirements=pip_requirements(),
            )
    finally:
        pyfunc_log.setLevel(level)
