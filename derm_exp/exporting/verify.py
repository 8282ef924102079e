"""Export verification: ONNX Runtime vs PyTorch on the same preprocessed images.

The inputs are the checkpoint's own validation images when its saved split and the image files
are reachable, else generated images (smooth random colour fields at the photo size, put through
the model's eval transform): never the test split.

A metadata-fusion model is verified twice on those images: with encoded metadata (the split's
own rows, else records drawn from the encoder's categories and training age range; in both,
a quarter of the images lack the age, a quarter have the age only and a quarter have nothing
known), and with the metadata withheld, where PyTorch runs ``model(x)`` alone and ONNX Runtime
is fed the encoded "nothing known" vector, exactly what ``backend=onnxruntime`` feeds then.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from derm_exp.errors import UserError
from derm_exp.exporting.metadata import INPUT_NAME, METADATA_INPUT_NAME
from derm_exp.exporting.quantize import quiet_logger

log = logging.getLogger(__name__)

# Default tolerances on the largest absolute difference of any class probability (at the
# model's temperature) over the verification images. fp32: the two runtimes differ by float
# rounding only (issue 18: 5e-5 relative on logits). int8 is approximate by design.
TOLERANCES = {"fp32": 1.0e-4, "int8": 0.25}


class ExportVerificationError(UserError, RuntimeError):
    """ONNX Runtime's output differs from PyTorch's beyond the tolerance."""


@dataclass(frozen=True)
class Verification:
    """How an export agrees with PyTorch (probabilities at the model's temperature)."""

    inputs: str
    n_images: int
    max_abs_prob_diff: float
    mean_abs_prob_diff: float
    max_abs_logit_diff: float
    logit_scale: float
    argmax_agreement: float
    tolerance: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VerificationBatch:
    """Preprocessed images (N, 3, H, W); for a metadata model also their encoded metadata and
    the encoded "nothing known" rows (both (N, M) float32)."""

    images: torch.Tensor
    description: str
    metadata: torch.Tensor | None = None
    withheld: torch.Tensor | None = None


def verification_inputs(loaded: Any, source: Any, n: int = 16, seed: int = 0) -> tuple[Any, str]:
    """(N, 3, H, W) preprocessed images and what they are (see the module docstring)."""
    batch = verification_batch(loaded, source, n, seed)
    return batch.images, batch.description


def verification_batch(loaded: Any, source: Any, n: int = 16, seed: int = 0) -> VerificationBatch:
    """The verification images and, for a metadata model, metadata (see the module docstring)."""
    from derm_exp.data.transforms import build_eval_transform

    transform = build_eval_transform(loaded.data_config)
    rows = _validation_rows(source, n)
    rng = np.random.default_rng(seed)
    if rows is not None:
        from derm_exp.data.images import load_image

        images = torch.stack([transform(load_image(str(p))) for p in rows["path"]])
        described = f"{len(rows)} validation images of the checkpoint's run"
    else:
        images = torch.stack([transform(_generated_image(rng)) for _ in range(n)])
        described = f"{n} generated images (no reachable validation split)"
    encoder = getattr(loaded, "metadata_encoder", None)
    if encoder is None:
        return VerificationBatch(images, described)
    from derm_exp.data.metadata_encoding import MetadataEncoder

    fresh = MetadataEncoder.from_dict(encoder.to_dict())  # the model's keeps its warned values
    records, what = _records(fresh, rows, len(images), rng)
    with quiet_logger("derm_exp.data.metadata_encoding"):  # a split's values unseen in training
        metadata = torch.from_numpy(fresh.encode_records(_with_missing(records)))
    withheld = torch.from_numpy(np.tile(fresh.missing_vector(), (len(images), 1)))
    described += f", each with {what} (some fields or all missing) and with it withheld"
    return VerificationBatch(images, described, metadata, withheld)


def _validation_rows(source: Any, n: int) -> Any:
    """The first ``n`` rows of the run's saved validation split whose images exist here (None:
    no split, or too few of its images)."""
    if source is None:
        return None
    try:
        from derm_exp.data.splits import load_split_csv

        frame = load_split_csv(source.split_csv("val"))
    except Exception as exc:  # no saved split, no tracking store, ...: use generated images
        log.debug("no validation split for verification: %s", exc)
        return None
    from pathlib import Path

    found = frame[[Path(p).is_file() for p in frame["path"].astype(str)]].head(n)
    return found if len(found) >= min(n, len(frame)) > 0 else None


def _records(encoder: Any, rows: Any, n: int, rng: np.random.Generator) -> tuple[list, str]:
    """Metadata dicts for the verification images: the split rows' own, else drawn from the
    encoder's categories and its training ages."""
    from derm_exp.data.metadata_encoding import METADATA_COLUMNS

    cols = [c for c in METADATA_COLUMNS if rows is not None and c in rows.columns]
    if cols:
        values = rows[cols].astype(object).where(rows[cols].notna(), None)
        return values.to_dict("records"), "its split metadata"
    records = []
    for _ in range(n):
        age = float(np.clip(np.round(rng.normal(encoder.age_mean, encoder.age_std) / 5) * 5, 0, 95))
        rec: dict[str, Any] = {"age": age}
        for col, known in encoder.categories.items():
            rec[col] = str(rng.choice(list(known))) if known else None
        records.append(rec)
    return records, "generated metadata"


def _with_missing(records: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """Every 4th record kept whole; the others without age, with the age only, or None."""
    out: list[dict[str, Any] | None] = []
    for i, rec in enumerate(records):
        kind = i % 4
        if kind == 0:
            out.append(dict(rec))
        elif kind == 1:
            out.append({k: v for k, v in rec.items() if k != "age"})
        elif kind == 2:
            out.append({"age": rec.get("age")})
        else:
            out.append(None)
    return out


def _generated_image(rng: np.random.Generator) -> Any:
    """A 600x450 RGB image: a smooth random colour field plus noise (lesion-photo sized)."""
    from PIL import Image

    coarse = rng.uniform(0, 255, size=(6, 8, 3)).astype(np.uint8)
    img = Image.fromarray(coarse).resize((600, 450), Image.Resampling.BICUBIC)
    noisy = np.asarray(img, np.float32) + rng.normal(0, 12, size=(450, 600, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def compare(
    torch_logits: np.ndarray,
    ort_logits: np.ndarray,
    temperature: float,
    tolerance: float,
    inputs: str,
) -> Verification:
    """Agreement of two (N, C) logit arrays; ``passed`` when the largest probability
    difference is within ``tolerance``."""
    t = torch.as_tensor(torch_logits, dtype=torch.float32)
    o = torch.as_tensor(ort_logits, dtype=torch.float32)
    p_t, p_o = torch.softmax(t / temperature, -1), torch.softmax(o / temperature, -1)
    diff = (p_t - p_o).abs()
    max_diff = float(diff.max())
    return Verification(
        inputs=inputs,
        n_images=int(t.shape[0]),
        max_abs_prob_diff=max_diff,
        mean_abs_prob_diff=float(diff.mean()),
        max_abs_logit_diff=float((t - o).abs().max()),
        logit_scale=float(t.abs().max()),
        argmax_agreement=float((t.argmax(-1) == o.argmax(-1)).float().mean()),
        tolerance=float(tolerance),
        passed=bool(max_diff <= tolerance),
    )


def verify_export(
    model: torch.nn.Module,
    session: Any,
    inputs: torch.Tensor,
    temperature: float,
    tolerance: float,
    description: str,
    metadata: torch.Tensor | None = None,
    withheld: torch.Tensor | None = None,
) -> Verification:
    """Run ``inputs`` through the network (fp32, eval) and the ONNX Runtime ``session``;
    :class:`ExportVerificationError` (both numbers) when they differ beyond ``tolerance``.

    With ``metadata`` (a metadata model's (N, M) encoded metadata) both runtimes get it; with
    ``withheld`` too, the images are compared a second time: ``model(x)`` (no metadata) against
    the session fed ``withheld`` (the encoded "nothing known" rows)."""
    reference, ort_out = _both_runtimes(model, session, inputs, metadata, withheld)
    result = compare(reference, ort_out, temperature, tolerance, description)
    if not result.passed:
        raise ExportVerificationError(
            f"ONNX Runtime disagrees with PyTorch on {description}: largest probability "
            f"difference {result.max_abs_prob_diff:.3g} > tolerance {tolerance:.3g} (logits "
            f"differ by up to {result.max_abs_logit_diff:.3g}, scale {result.logit_scale:.3g}; "
            f"argmax agreement {result.argmax_agreement:.0%}); the file was not written"
        )
    return result


def _both_runtimes(
    model: torch.nn.Module,
    session: Any,
    inputs: torch.Tensor,
    metadata: torch.Tensor | None,
    withheld: torch.Tensor | None,
) -> tuple[np.ndarray, np.ndarray]:
    """(PyTorch logits, ONNX Runtime logits), each (N, C), or (2N, C) with ``withheld``."""
    model.eval()
    device = next(model.parameters()).device
    x = inputs.to(device).float()
    image = inputs.float().contiguous().numpy()
    with torch.inference_mode():
        if metadata is None:
            reference = model(x).float().cpu().numpy()
            return reference, session.run(None, {INPUT_NAME: image})[0]
        runs = [(model(x, metadata.to(device).float()), metadata)]
        if withheld is not None:
            runs.append((model(x), withheld))  # the torch path of metadata=None
    torch_out = [r.float().cpu().numpy() for r, _ in runs]
    ort_out = [
        session.run(None, {INPUT_NAME: image, METADATA_INPUT_NAME: m.float().numpy()})[0]
        for _, m in runs
    ]
    return np.concatenate(torch_out), np.concatenate(ort_out)
