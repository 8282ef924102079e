"""Figures of explanations: one image's panel, a folder's contact sheet, a class gallery and the
sanity check's cascade. matplotlib (Agg, no display); every figure carries the disclaimer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from derm_exp.explanations.sanity import SanityReport
from derm_exp.inference.predictor import DISCLAIMER

__all__ = [
    "DISCLAIMER",
    "METHOD_TITLES",
    "Tile",
    "explanation_figure",
    "sanity_figure",
    "tile_sheet",
]
METHOD_TITLES = {
    "gradcam": "Grad-CAM",
    "integrated_gradients": "integrated gradients",
    "attention": "acrnn attention",
}


@dataclass
class Tile:
    """One overlay with its caption lines, for sheets and galleries."""

    image: Image.Image
    title: str
    caption: str = ""
    border: str | None = None  # a colour, e.g. green for right and red for wrong


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path | None):
    """Write ``fig`` to ``path`` (when given) and close it; return the figure."""
    plt = _pyplot()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def explanation_figure(
    image: Image.Image,
    overlay: Image.Image,
    *,
    title: str,
    top: Sequence[tuple[str, float]],
    method: str,
    target: str,
    path: Path | None = None,
):
    """Image and overlay side by side; the top classes with probabilities as the caption."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    for ax, shown, name in zip(axes, (image, overlay), ("image", "heat map"), strict=True):
        ax.imshow(shown)
        ax.set_title(name if name == "image" else f"{METHOD_TITLES.get(method, method)}: {target}")
        ax.axis("off")
    caption = "   ".join(f"{c} {p:.1%}" for c, p in top)
    fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.09, f"top classes: {caption}", ha="center", fontsize=10)
    fig.text(0.5, 0.03, DISCLAIMER, ha="center", fontsize=8, color="dimgray")
    fig.subplots_adjust(left=0.02, right=0.98, top=0.86, bottom=0.14, wspace=0.04)
    return _save(fig, path)


def tile_sheet(tiles: Sequence[Tile], *, title: str, columns: int = 4, path: Path | None = None):
    """A grid of overlays with their captions (a folder's contact sheet, a class gallery)."""
    plt = _pyplot()
    columns = max(1, min(columns, len(tiles)))
    rows = max(1, -(-len(tiles) // columns))
    fig, axes = plt.subplots(
        rows, columns, figsize=(2.6 * columns, 2.9 * rows + 0.8), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for ax, tile in zip(axes.flat, tiles, strict=False):
        ax.imshow(tile.image)
        ax.set_title(f"{tile.title}\n{tile.caption}".strip(), fontsize=7)
        if tile.border:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(tile.border)
                spine.set_linewidth(3)
    fig.suptitle(title, fontsize=10)
    fig.text(0.5, 0.01, DISCLAIMER, ha="center", fontsize=7, color="dimgray")
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    return _save(fig, path)


def sanity_figure(report: SanityReport, path: Path | None = None):
    """Spearman correlation (trained vs randomised maps) after each cascade step."""
    plt = _pyplot()
    names = [name for name, _ in report.cascade]
    values = [value for _, value in report.cascade]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(names) + 2), 3.8))
    ax.plot(range(len(names)), values, marker="o", label="trained vs randomised")
    ax.axhline(
        report.class_sensitivity_spearman, color="tab:orange", ls="--", label="top vs 2nd class"
    )
    ax.axhline(0.0, color="gray", lw=0.6)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel("mean Spearman rank correlation")
    ax.set_xlabel("layers randomised (cumulative, from the top)")
    ax.set_title(
        f"{METHOD_TITLES.get(report.method, report.method)} randomisation check "
        f"({report.n_images} images)",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
