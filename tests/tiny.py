"""The tiny recipe the tests share: timm's ``test_efficientnet`` at 32 px, on the CPU.

``TINY_MODEL`` is the model part (any app that builds a model); ``TINY`` adds the loader and
device settings of a training run, without the end-of-run explanation gallery (~15 s of a tiny
run on the loaded 2-core test machine; the gallery is checked on the README's demo run,
tests/explanations/test_explain_cli.py). Tests add what they are about (epochs, TTA, registry,
...).
"""

from __future__ import annotations

TINY_MODEL: tuple[str, ...] = ("model=tiny", "data.image_size=32")
TINY: tuple[str, ...] = (
    *TINY_MODEL,
    "data.batch_size=16",
    "data.eval_batch_size=64",
    "data.num_workers=0",
    "trainer.log_every_n_steps=2",
    "device=cpu",
    "explain.gallery=false",
)


def tiny(*extra: str) -> list[str]:
    """``TINY`` followed by ``extra`` overrides (later ones win)."""
    return [*TINY, *extra]
