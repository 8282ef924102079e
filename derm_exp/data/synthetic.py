"""Synthetic HAM10000-format demo dataset: lesion-like blobs whose look depends on the class.

Not medical data. Each class has its own size, outline irregularity, colours and texture (e.g.
dark multi-coloured irregular ``mel``, small ``df`` with a pale centre, red vessel lines in
``bcc``), so a small CNN learns it above chance at 64 px. Some lesions have several images:
the same lesion seen with another rotation, position, zoom and lighting, as in HAM10000.

CLI: ``python -m derm_exp.data.synthetic out=DIR n=N [seed=S] [size=WxH] [overwrite=true]``
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from derm_exp.data.errors import DataValidationError
from derm_exp.data.metadata import CLASSES, METADATA_FILE

log = logging.getLogger(__name__)

MIN_IMAGES = 60
MIN_LESIONS_PER_CLASS = 3
IMAGES_PER_LESION = 1.35  # HAM10000 has ~1.34 images per lesion

# Share of images per class (HAM10000-like imbalance, rare classes lifted so they can be split).
SHARES: dict[str, float] = {
    "akiec": 0.04,
    "bcc": 0.06,
    "bkl": 0.11,
    "df": 0.03,
    "mel": 0.11,
    "nv": 0.62,
    "vasc": 0.03,
}

LOCALIZATIONS = (
    "back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest",
    "foot", "neck", "scalp", "hand", "ear", "genital", "unknown",
)  # fmt: skip
_LOC_BODY = np.array([22, 20, 14, 11, 10, 7, 4, 3, 2, 2, 1, 1, 1, 2], dtype=float)
_LOC_SUN = np.array([8, 8, 8, 12, 3, 30, 6, 1, 8, 10, 3, 2, 0, 1], dtype=float)  # sun-exposed


@dataclass(frozen=True)
class ClassStyle:
    """How lesions of one class look and which metadata they get."""

    radius: tuple[float, float]  # lesion radius as a fraction of the shorter image side
    irregular: float  # outline irregularity (Fourier amplitude)
    edge: float  # edge sharpness (larger = sharper)
    color: tuple[int, int, int]
    age: float  # mean age
    dx_type: Mapping[str, float]


STYLES: dict[str, ClassStyle] = {
    "akiec": ClassStyle((0.20, 0.30), 0.12, 8, (200, 110, 100), 67, {"histo": 1.0}),
    "bcc": ClassStyle((0.20, 0.30), 0.08, 10, (215, 160, 155), 67, {"histo": 1.0}),
    "bkl": ClassStyle(
        (0.24, 0.34),
        0.10,
        10,
        (175, 140, 95),
        60,
        {"histo": 0.6, "consensus": 0.3, "confocal": 0.1},
    ),
    "df": ClassStyle((0.12, 0.17), 0.03, 7, (160, 110, 80), 52, {"histo": 0.6, "consensus": 0.4}),
    "mel": ClassStyle((0.28, 0.40), 0.20, 6, (70, 40, 32), 61, {"histo": 1.0}),
    "nv": ClassStyle(
        (0.20, 0.28),
        0.03,
        14,
        (130, 82, 55),
        47,
        {"follow_up": 0.55, "histo": 0.35, "consensus": 0.07, "confocal": 0.03},
    ),
    "vasc": ClassStyle((0.14, 0.22), 0.06, 16, (150, 35, 70), 50, {"histo": 0.6, "consensus": 0.4}),
}

SKIN_TONES = np.array([[236, 201, 180], [222, 180, 150], [200, 150, 118], [165, 115, 85]], float)


@dataclass
class _Lesion:
    dx: str
    radius: float
    aspect: float
    harmonics: np.ndarray  # (K, 3): order, amplitude, phase
    color: np.ndarray
    texture: np.ndarray  # (4, 3): fx, fy, phase of texture waves
    spots: np.ndarray  # (M, 3): u, v, radius of inner spots (vasc lobules, mel patches)
    lines: np.ndarray  # (L, 3): angle, offset, curvature (bcc vessels)
    skin: np.ndarray
    strength: float  # how typical the class pattern is (low = ambiguous lesion)


def _sample_lesion(dx: str, rng: np.random.Generator) -> _Lesion:
    style = STYLES[dx]
    orders = np.arange(2, 8)
    amps = style.irregular * rng.uniform(0.3, 1.0, len(orders)) / np.sqrt(orders - 1)
    harmonics = np.stack([orders, amps, rng.uniform(0, 2 * np.pi, len(orders))], axis=1)
    n_spots = {"vasc": 5, "mel": 4}.get(dx, 0)
    spot_r = rng.uniform(0.15, 0.35, n_spots)
    spot_pos = rng.uniform(-0.55, 0.55, (n_spots, 2))
    n_lines = 4 if dx == "bcc" else 0
    return _Lesion(
        dx=dx,
        radius=rng.uniform(*style.radius),
        aspect=rng.uniform(1.0, 1.4),
        harmonics=harmonics,
        color=np.clip(np.array(style.color, float) * rng.uniform(0.8, 1.2, 3), 0, 255),
        texture=np.stack(
            [rng.normal(0, 6, 4), rng.normal(0, 6, 4), rng.uniform(0, 2 * np.pi, 4)], axis=1
        ),
        spots=np.column_stack([spot_pos, spot_r]),
        lines=np.column_stack(
            [
                rng.uniform(0, np.pi, n_lines),
                rng.uniform(-0.6, 0.6, n_lines),
                rng.uniform(-2, 2, n_lines),
            ]
        ),
        skin=SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.93, 1.05, 3),
        strength=float(rng.uniform(0.2, 1.0)),
    )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int = 5) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bicubically."""
    h, w = shape
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))


def _render(lesion: _Lesion, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """One view (rotation, shift, zoom, light) of ``lesion``: uint8 (H, W, 3); float32 maths."""
    w, h = size
    side = min(w, h)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    f32 = np.float32
    x = (xs - w / 2) / side - rng.uniform(-0.1, 0.1)
    y = (ys - h / 2) / side - rng.uniform(-0.1, 0.1)
    # Python floats, not NumPy float64 scalars, so the arrays stay float32 (NEP 50 promotion).
    angle = float(rng.uniform(0, 2 * np.pi))
    zoom = float(lesion.radius * rng.uniform(0.88, 1.12))
    flip = 1.0 if rng.random() < 0.5 else -1.0
    cos, sin, aspect = math.cos(angle), math.sin(angle), float(lesion.aspect)
    # Lesion frame: unit radius, rotated, optionally mirrored, so texture moves with the lesion.
    u = (cos * x + sin * y) / zoom
    v = flip * (-sin * x + cos * y) / zoom
    theta = np.arctan2(v, u / aspect)
    r = np.hypot(u / aspect, v)
    k, amp, phase = lesion.harmonics.astype(f32).T
    outline = 1 + np.tensordot(amp, np.cos(k[:, None, None] * theta + phase[:, None, None]), 1)
    t = r / outline  # < 1 inside the lesion
    style = STYLES[lesion.dx]
    alpha = 1 / (1 + np.exp(-np.clip((1 - t) * float(style.edge), -30, 30)))

    fx, fy, ph = lesion.texture.astype(f32).T
    waves = np.cos(fx[:, None, None] * u + fy[:, None, None] * v + ph[:, None, None]).mean(0)
    color = lesion.color.astype(f32) * (1 + 0.15 * waves)[..., None]
    inside = np.clip(1 - t, 0, 1)[..., None]
    plain = color

    if lesion.dx == "nv":  # fine reticular network, darker centre
        net = (np.sin(14 * u) * np.sin(14 * v)) ** 2
        color = color * (1 - 0.25 * net[..., None]) * (1 - 0.2 * inside)
    elif lesion.dx == "mel":  # blue-grey and black blotches, asymmetric
        for su, sv, sr in lesion.spots.astype(f32):
            blot = np.exp(-((u - su) ** 2 + (v - sv) ** 2) / (2 * sr**2))[..., None]
            color = color * (1 - blot) + np.array([95, 105, 130], f32) * blot
        color = color * (1 - 0.35 * np.clip(u, 0, 1)[..., None])
    elif lesion.dx == "bkl":  # waxy, cerebriform stripes
        stripes = 0.5 + 0.5 * np.sin(9 * u + 3 * waves)
        color = color * (0.8 + 0.35 * stripes[..., None])
    elif lesion.dx == "bcc":  # red branching vessels on pearly pink
        for ang, off, curve in lesion.lines.astype(f32):
            d = np.abs(np.cos(ang) * u + np.sin(ang) * v - off - 0.3 * curve * (u * u + v * v))
            vessel = np.exp(-((d / 0.04) ** 2))[..., None]
            color = color * (1 - vessel) + np.array([170, 25, 35], f32) * vessel
    elif lesion.dx == "akiec":  # rough, scaly: white flakes
        rough = rng.random(u.shape, dtype=f32)
        flakes = (rough > 0.88)[..., None]
        color = np.where(
            flakes, np.array([235, 220, 210], f32), color * (0.85 + 0.3 * rough)[..., None]
        )
    elif lesion.dx == "df":  # brown ring with a white scar-like centre
        centre = np.exp(-((t / 0.45) ** 4))[..., None]
        color = color * (1 - centre) + np.array([232, 215, 200], f32) * centre
    elif lesion.dx == "vasc":  # red-purple lobules
        for su, sv, sr in lesion.spots.astype(f32):
            lobule = np.exp(-((u - su) ** 2 + (v - sv) ** 2) / (2 * (0.6 * sr) ** 2))[..., None]
            color = color * (1 - 0.7 * lobule) + np.array([90, 10, 40], f32) * 0.7 * lobule

    color = plain + lesion.strength * (color - plain)

    light = 1 + 0.08 * _smooth_noise(rng, (h, w))[..., None]
    skin = (lesion.skin * rng.uniform(0.92, 1.06)).astype(f32) * light
    img = skin * (1 - alpha[..., None]) + color * alpha[..., None]
    if rng.random() < 0.6:  # dermoscope vignette
        rr = np.hypot((xs - w / 2) / (w / 2), (ys - h / 2) / (h / 2))
        img = img * np.clip(1.6 - 0.8 * rr, 0, 1)[..., None]
    if rng.random() < 0.3:  # a few hairs
        for _ in range(rng.integers(1, 5)):
            a, off, c = rng.uniform(0, np.pi), rng.uniform(-0.6, 0.6), rng.uniform(-1, 1)
            d = np.abs(np.cos(a) * x + np.sin(a) * y - off - c * x * y)
            img = np.where((d < 0.8 / side)[..., None], img * 0.25, img)
    img += 3 * rng.standard_normal(img.shape, dtype=f32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _render_image(lesion: _Lesion, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
    """Render at half resolution and upscale bicubically: 3x faster, still smooth at 200x150."""
    w, h = size
    if min(w, h) < 96:
        return Image.fromarray(_render(lesion, rng, size))
    small = _render(lesion, rng, ((w + 1) // 2, (h + 1) // 2))
    return Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)


def class_image_counts(n_images: int) -> dict[str, int]:
    """Images per class for ``n_images``: ``SHARES`` with at least 3 per class, nv gets the rest."""
    if n_images < MIN_IMAGES:
        raise DataValidationError(
            f"the demo dataset needs n >= {MIN_IMAGES} images so every class has at least "
            f"{MIN_LESIONS_PER_CLASS} lesions for the train/val/test split, got {n_images}"
        )
    counts = {c: max(MIN_LESIONS_PER_CLASS, round(SHARES[c] * n_images)) for c in CLASSES}
    counts["nv"] = n_images - sum(v for c, v in counts.items() if c != "nv")
    return counts


def _metadata_for_lesion(dx: str, rng: np.random.Generator) -> dict[str, Any]:
    types = STYLES[dx].dx_type
    sun = dx in ("akiec", "bcc")
    loc_p = (_LOC_SUN if sun else _LOC_BODY) / (_LOC_SUN if sun else _LOC_BODY).sum()
    missing = rng.random() < 0.005  # HAM10000 has a few rows without age and sex
    age = float(np.clip(5 * round(rng.normal(STYLES[dx].age, 14) / 5), 0, 85))
    return {
        "dx_type": rng.choice(list(types), p=list(types.values())),
        "age": np.nan if missing else age,
        "sex": "unknown" if missing else ("male" if rng.random() < 0.54 else "female"),
        "localization": LOCALIZATIONS[rng.choice(len(LOCALIZATIONS), p=loc_p)],
    }


def _write(out: Path, n_images: int, seed: int, size: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    plan: list[tuple[int, str]] = []  # (lesion number, dx) per image
    lesions: list[str] = []
    for dx, n_c in class_image_counts(n_images).items():
        n_lesions = int(np.clip(round(n_c / IMAGES_PER_LESION), MIN_LESIONS_PER_CLASS, n_c))
        per_lesion = np.ones(n_lesions, dtype=int)
        np.add.at(per_lesion, rng.integers(0, n_lesions, n_c - n_lesions), 1)
        for k in per_lesion:
            plan += [(len(lesions), dx)] * int(k)
            lesions.append(dx)
    lesion_ids = [f"HAM_9{i:06d}" for i in rng.permutation(len(lesions))]  # ids hide the class
    lesion_params = [_sample_lesion(dx, rng) for dx in lesions]
    lesion_meta = [_metadata_for_lesion(dx, rng) for dx in lesions]

    (out / "images").mkdir(parents=True)
    rows = []
    for img_no, plan_idx in enumerate(rng.permutation(len(plan))):
        lesion, dx = plan[plan_idx]
        image_id = f"ISIC_9{img_no:06d}"
        _render_image(lesion_params[lesion], rng, size).save(
            out / "images" / f"{image_id}.jpg", quality=90
        )
        rows.append(
            {"lesion_id": lesion_ids[lesion], "image_id": image_id, "dx": dx, **lesion_meta[lesion]}
        )
    frame = pd.DataFrame(rows).sort_values(["lesion_id", "image_id"])
    frame.to_csv(out / METADATA_FILE, index=False)


def generate_demo_dataset(
    out: str | Path,
    n_images: int = 800,
    seed: int = 0,
    size: tuple[int, int] = (200, 150),
    overwrite: bool = False,
) -> Path:
    """Write ``out/HAM10000_metadata.csv`` + ``out/images/*.jpg`` (``size`` = width, height).

    Built in a temporary sibling folder and moved into place, so an interrupted run never leaves
    a half-written dataset behind. An existing dataset in ``out`` is replaced only with
    ``overwrite`` (only its metadata file and images/ folder are removed).
    """
    out = Path(out).expanduser().resolve()
    class_image_counts(n_images)  # validate before touching the disk
    if min(size) < 16:
        raise DataValidationError(f"demo image size must be at least 16x16 pixels, got {size}")
    existing = [p for p in (out / METADATA_FILE, out / "images") if p.exists()]
    if existing and not overwrite:
        raise DataValidationError(
            f"{out} already holds a dataset ({', '.join(p.name for p in existing)}); "
            "pass overwrite=true to replace it or choose another folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        _write(tmp, n_images, seed, size)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if not out.exists():
            os.replace(tmp, out)  # atomic: the dataset appears complete or not at all
        else:  # out holds other files too: swap in our two entries, metadata last
            for p in existing:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            os.replace(tmp / "images", out / "images")
            os.replace(tmp / METADATA_FILE, out / METADATA_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_demo_dataset(out: str | Path, n_images: int = 800, seed: int = 0) -> Path:
    """Return ``out``, generating the demo dataset there first if it has no metadata file.

    Safe when parallel runs (e.g. a joblib sweep) race to create it: same seed, same files.
    """
    out = Path(out).expanduser().resolve()
    csv = out / METADATA_FILE
    if not csv.is_file():
        log.info("Generating the synthetic demo dataset (%d images) in %s ...", n_images, out)
        try:
            generate_demo_dataset(out, n_images=n_images, seed=seed, overwrite=True)
        except OSError:
            if not csv.is_file():
                raise
            log.info("Another process created the demo dataset first; using it")
    return out


def resolve_data_root(data_cfg: Mapping[str, Any]) -> Path:
    """The dataset folder for a ``data`` config: ``data.root``, or the demo dataset when null."""
    if data_cfg.get("root"):
        return Path(str(data_cfg["root"])).expanduser().resolve()
    demo = data_cfg["demo"]
    return ensure_demo_dataset(demo["dir"], int(demo["n_images"]), int(demo["seed"]))


USAGE = """usage: python -m derm_exp.data.synthetic out=DIR [n=800] [seed=0] [size=200x150]
                                                  [overwrite=false]

Write a synthetic HAM10000-format dataset (not medical data) for demos and tests:
DIR/HAM10000_metadata.csv and DIR/images/*.jpg.

  out=DIR          output folder (required)
  n=N              number of images (>= 60; default 800)
  seed=S           random seed (default 0)
  size=WxH         image width x height in pixels (default 200x150)
  overwrite=BOOL   replace a dataset already in DIR (default false)
"""


def _parse_args(argv: Sequence[str]) -> dict[str, Any]:
    # key=value like the Hydra entrypoints; argparse cannot parse that form.
    args: dict[str, Any] = {"n": 800, "seed": 0, "size": (200, 150), "overwrite": False}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in (*args, "out"):
            raise ValueError(
                f"unrecognised argument {arg!r}; expected key=value with key in "
                "out, n, seed, size, overwrite"
            )
        try:
            if key in ("n", "seed"):
                args[key] = int(value)
            elif key == "size":
                w, h = value.lower().split("x")
                args[key] = (int(w), int(h))
            elif key == "overwrite":
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                args[key] = value.lower() in ("true", "1", "yes")
            else:
                args[key] = value
        except ValueError:
            raise ValueError(f"bad value in {arg!r}") from None
    if "out" not in args or not args["out"]:
        raise ValueError("out=DIR is required")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        args = _parse_args(argv)
        out = generate_demo_dataset(
            args["out"], args["n"], args["seed"], args["size"], args["overwrite"]
        )
    except (ValueError, OSError) as e:  # DataValidationError is a ValueError
        print(f"error: {e}\n\n{USAGE}", file=sys.stderr)
        return 2
    print(f"Wrote {args['n']} synthetic images to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
