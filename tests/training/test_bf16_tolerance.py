"""bf16 autocast training (``trainer.amp=bf16``, the default of the GPU presets
experiment=gpu_v2s|gpu_v2m) stays within a stated tolerance of fp32 on a tiny run.

Same seed, data and steps through the trainer's own ``train_one_epoch``; stated tolerance:
both runs learn (last-epoch loss at least 60 % below the first epoch's), the mean training loss
of the last two epochs differs from fp32's by at most 5 % of the first epoch's loss (one noisy
epoch of a run near zero loss must not decide), and the two models' predicted classes agree on
at least 85 % of held-out images, with held-out accuracies within 0.1.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from derm_exp.models.classifier import build_model
from derm_exp.runtime import resolve_precision
from derm_exp.training.loop import StepContext, predict_logits, train_one_epoch
from derm_exp.training.schedulers import BatchScheduler
from tests.conftest import compose_train
from tests.tiny import TINY_MODEL

LOSS_TOL = 0.05  # of the first epoch's loss
AGREEMENT_MIN = 0.85
ACC_TOL = 0.10


def _data(n: int, seed: int) -> TensorDataset:
    """Images whose class sets the colour balance and a stripe frequency (learnable, noisy)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 7
    x = torch.randn(n, 3, 32, 32, generator=g) * 0.6
    ramp = torch.linspace(0, 3.1416, 32)
    for i, c in enumerate(labels.tolist()):
        x[i, c % 3] += 0.8
        x[i, :, :, :] += 0.5 * torch.sin(ramp * (c + 1))
    return TensorDataset(x.contiguous(memory_format=torch.channels_last), labels)


def _train(amp: str, epochs: int = 5):
    torch.manual_seed(0)
    cfg = compose_train([*TINY_MODEL])
    model = build_model(cfg.model, num_classes=7, image_size=32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    device = torch.device("cpu")
    ctx = StepContext(device=device, precision=resolve_precision(amp, device))
    loader = DataLoader(
        _data(112, 1), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    losses = []
    for epoch in range(epochs):
        out = train_one_epoch(
            model,
            loader,
            torch.nn.CrossEntropyLoss(),
            opt,
            BatchScheduler("none", None),
            ctx,
            first_update=epoch * len(loader),
            epoch=epoch,
        )
        losses.append(out["loss"])
    held_out = DataLoader(_data(140, 2), batch_size=70)
    logits, labels = predict_logits(model.eval(), held_out, ctx)
    return losses, logits.argmax(1), labels


def test_bf16_training_matches_fp32_within_tolerance():
    loss32, pred32, labels = _train("off")
    loss16, pred16, _ = _train("bf16")
    assert loss32[-1] < 0.4 * loss32[0] and loss16[-1] < 0.4 * loss16[0], (loss32, loss16)
    late32, late16 = sum(loss32[-2:]) / 2, sum(loss16[-2:]) / 2
    assert abs(late16 - late32) <= LOSS_TOL * loss32[0], (loss32, loss16)
    agreement = float((pred16 == pred32).mean())
    assert agreement >= AGREEMENT_MIN, agreement
    acc32, acc16 = float((pred32 == labels).mean()), float((pred16 == labels).mean())
    assert abs(acc16 - acc32) <= ACC_TOL, (acc32, acc16)
