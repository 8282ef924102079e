"""One training epoch and batched prediction: the inner loops, free of tracking and config."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from derm_exp.errors import UserError
from derm_exp.runtime import Precision
from derm_exp.training import distributed
from derm_exp.training.schedulers import BatchScheduler

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
    """The loss (or the weights) became NaN/inf."""


def check_finite_weights(model: nn.Module, epoch: int) -> None:
    """Raise :class:`NonFiniteLossError` when any parameter or buffer is NaN/inf.

    Run after each epoch, before validation and checkpointing: a last step can leave non-finite
    weights behind a finite loss, and those must never be scored or saved.
    """
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteLossError(f"non-finite weights ({name}) after epoch {epoch}")


@dataclass
class StepContext:
    """What the training step needs besides model, data and optimizer."""

    device: torch.device
    precision: Precision
    channels_last: bool = True
    grad_clip_norm: float | None = None
    log_every_n_steps: int = 20
    accumulate_grad_batches: int = 1


def optimizer_steps(batches: int, accumulate: int) -> int:
    """Optimizer updates in an epoch of ``batches`` micro-batches accumulated ``accumulate`` at a
    time: the last, partial group of an epoch steps too."""
    return math.ceil(batches / accumulate)


def _no_sync(model: nn.Module, skip_sync: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync()`` (no gradient all-reduce: it happens on the group's last micro-batch)
    when ``skip_sync``; a null context otherwise and for a plain module."""
    ddp = getattr(model, "_orig_mod", model)  # under torch.compile
    if skip_sync and isinstance(ddp, nn.parallel.DistributedDataParallel):
        return ddp.no_sync()
    return contextlib.nullcontext()


def _optimizer_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    ctx: StepContext,
) -> None:
    """Clip (after unscaling) and step on the accumulated gradients, then clear them."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if ctx.grad_clip_norm:
        nn.utils.clip_grad_norm_(model.parameters(), ctx.grad_clip_norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _to_device(x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    x = x.to(ctx.device, non_blocking=True)
    if x.ndim == 4:  # loader batches are channels-last already on a CPU: then a no-op
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=fmt)
    return x


def compile_for_training(model: torch.nn.Module, setting: bool | str) -> torch.nn.Module:
    """``trainer.compile``: false | true | a torch.compile mode (default, reduce-overhead,
    max-autotune). Only the training forward/backward is compiled; validation, EMA and
    checkpoints keep using ``model`` itself, so state_dict keys never gain ``_orig_mod.``."""
    if setting in (False, None, "false", "off"):
        return model
    mode = None if setting in (True, "true", "default") else str(setting)
    log.info("torch.compile(mode=%s) for training; the first steps include compilation", mode)
    return torch.compile(model, mode=mode)


def train_one_epoch(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: BatchScheduler,
    ctx: StepContext,
    *,
    first_update: int,
    epoch: int,
    scaler: torch.amp.GradScaler | None = None,
    mixup: Callable | None = None,
    ema: nn.Module | None = None,
    desc: str = "train",
) -> dict[str, float]:
    """Train for one pass over ``loader``; returns mean loss and accuracy.

    With ``ctx.accumulate_grad_batches`` = k, gradients of k consecutive batches add up before
    one optimizer step (each loss scaled by 1/k; by 1/r for the epoch's last group of r < k);
    the LR schedule and EMA advance per optimizer step, whose number ``update`` counts from
    ``first_update``. Losses and correct counts accumulate on the device; the host syncs only
    every ``log_every_n_steps`` batches (progress bar) and at the end.
    """
    model.train()
    loss_sum = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device)
    seen = 0
    update = first_update
    k, batches = ctx.accumulate_grad_batches, len(loader)
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None)
    for step, (images, targets, *meta) in enumerate(bar):
        distributed.raise_if_stopped()  # a SIGTERM whose own raise was swallowed
        images, targets = _to_device(images, ctx), targets.to(ctx.device, non_blocking=True)
        # A metadata model's batches carry the encoded metadata third (mixup keeps each
        # image's own: metadata is an input, not a target).
        extra = [m.to(ctx.device, non_blocking=True) for m in meta]
        hard = targets
        if mixup is not None and images.shape[0] % 2 == 0:
            images, targets = mixup(images, targets)
        group = min(k, batches - step + step % k)  # micro-batches in this step's group
        last = step % k == group - 1
        if step % k == 0:
            scheduler.step(update)
        with _no_sync(model, not last):  # the forward too, as DDP's no_sync() asks
            with ctx.precision.autocast(ctx.device):
                logits = model(images, *extra)
                loss = criterion(logits.float(), targets)
            scaled = loss / group if group > 1 else loss
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if last:
            _optimizer_step(model, optimizer, scaler, ctx)
            if ema is not None:
                ema.update(distributed.unwrap(model), step=update)  # torch.compile / DDP
            update += 1
        batch = images.shape[0]
        seen += batch
        loss_sum += loss.detach() * batch
        correct += (logits.detach().argmax(1) == hard).sum()
        if (step + 1) % ctx.log_every_n_steps == 0:
            mean_loss = (loss_sum / seen).item()
            if not distributed.all_ok(math.isfinite(mean_loss)):  # every rank stops together
                raise NonFiniteLossError(f"non-finite training loss at epoch {epoch}, step {step}")
            bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
    if seen == 0:
        raise RuntimeError("the training loader produced no batch (is the training split empty?)")
    # Under DDP: the mean over ranks (equal shards), the same figure on every rank.
    means = distributed.mean_over_ranks(
        {"loss": (loss_sum / seen).item(), "accuracy": (correct / seen).item()}
    )
    if not math.isfinite(means["loss"]):
        raise NonFiniteLossError(f"non-finite training loss at epoch {epoch}")
    return means


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    ctx: StepContext,
    *,
    views: list[str] | None = None,
    desc: str = "predict",
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (N, C) and labels (N,) for ``loader`` (whose batches may carry a metadata model's
    encoded metadata third).

    With TTA ``views``, every view of a batch goes through the network as one batch and the
    returned array is (V, N, C) of per-view logits.
    """
    from derm_exp.inference.tta import expand_views

    model.eval()
    outs, labels = [], []
    for images, targets, *meta in tqdm(
        loader, desc=desc, leave=False, dynamic_ncols=True, disable=None
    ):
        images = _to_device(images, ctx)
        extra = [torch.as_tensor(m).to(ctx.device) for m in meta]  # a metadata model's input
        if views and views != ["identity"]:
            images = expand_views(images, views)
            extra = [m.repeat(len(views), 1) for m in extra]  # view-major, like the images
        with ctx.precision.autocast(ctx.device):
            logits = model(images, *extra).float()
        if views and views != ["identity"]:
            logits = logits.reshape(len(views), -1, logits.shape[-1])
        outs.append(logits.cpu())
        labels.append(targets)
    if not outs:
        raise RuntimeError("the evaluation loader produced no batch")
    cat_dim = 1 if views and views != ["identity"] else 0
    return torch.cat(outs, cat_dim).numpy(), torch.cat(labels).numpy()
