"""The tiny recipe the tests share: timm's ``test_efficientnet`` at 32 px, on the CPU.

``TINY_MODEL`` is the model part (any app that builds a model); ``TINY`` adds the loader and
device settings of a training run. Tests add what they are about (epochs, TTA, registry, ...).
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
)


def tiny(*extra: str) -> list[str]:
    """``TINY`` followed by ``extra`` overrides (later ones win)."""
    return [*TINY, *extra]
