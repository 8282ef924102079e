"""Training-curve diagnosis: a one-word verdict on how a run fitted, from its per-epoch history.

Pure functions of the trainer's ``history`` (``train/loss``, ``val/loss`` and the monitored
metric, one value per epoch). The verdict is the first rule that holds, in this order:

1. ``too_few_epochs``: fewer than :data:`MIN_EPOCHS` epochs; nothing else is judged.
2. ``unstable``: a loss or the monitored metric is not finite; or the metric fell by at least
   :data:`DROP_MAX` in one epoch; or, over the last :data:`WINDOW` epochs, its epoch-to-epoch
   changes vary by at least :data:`VARIATION_MAX` (standard deviation) and change direction at
   least :data:`REVERSALS_MIN` times (changes under :data:`FLAT` count as flat).
3. ``under_fitting`` when the selected model is degenerate (predicts one class).
4. ``over_fitting``: validation loss ended at least :data:`VAL_RISE_MAX` above its minimum, that
   minimum is at least :data:`RISE_EPOCHS` epochs old and the training loss kept falling since;
   or the train-val loss gap is at least :data:`GAP_MAX` of the validation loss and validation
   loss no longer falls (by :data:`VAL_SLOPE_MIN` per epoch, as in rule 5).
5. ``still_improving``: over the last :data:`WINDOW` epochs the metric's trend (least-squares
   slope) improves by at least :data:`SLOPE_MIN` per epoch, or validation loss falls by at least
   :data:`VAL_SLOPE_MIN` of its first value per epoch: more epochs would likely help.
6. ``under_fitting``: the metric's best is less than :data:`GAIN_MIN` better than epoch 1, or
   the training loss fell by less than :data:`TRAIN_DROP_MIN` of its first value.
7. ``good_fit`` otherwise: levelled off, validation loss near its minimum, a modest gap.

Units: the monitored metric is oriented so that larger is better. For ``monitor_mode=max``
(accuracy, balanced accuracy, F1, AUC: all in [0, 1]) changes are in the metric's own units;
for ``min`` (loss, ECE, Brier) they are fractions of its first-epoch value. The training loss is
measured with augmentation, mixup and label smoothing, the validation loss without, so the gap
is a hint, not a measurement: it can be negative, and it only counts with a stalled val loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

MIN_EPOCHS = 3
WINDOW = 5  # last epochs for the slope and the epoch-to-epoch variation
SLOPE_MIN = 0.01  # improvement per epoch that counts as "still improving"
VAL_SLOPE_MIN = 0.02  # val-loss fall per epoch (fraction of its first value), same meaning
DROP_MAX = 0.15  # one-epoch fall of the monitored metric that makes a run unstable
VARIATION_MAX = 0.03  # std of the epoch-to-epoch changes over the window ...
REVERSALS_MIN = 2  # ... with at least this many changes of direction
FLAT = 0.005  # smaller changes are "flat" when counting reversals
VAL_RISE_MAX = 0.10  # val loss above its minimum (fraction of the minimum)
RISE_EPOCHS = 2  # ... for at least this many epochs
GAP_MAX = 0.5  # (val loss - train loss) / val loss
GAIN_MIN = 0.02  # best minus first of the monitored metric
TRAIN_DROP_MIN = 0.05  # (first - last) / first of the training loss

VERDICTS = (
    "too_few_epochs",
    "unstable",
    "under_fitting",
    "over_fitting",
    "still_improving",
    "good_fit",
)
THRESHOLDS = {  # written to evaluation/fit_diagnosis.json with every verdict
    name: globals()[name]
    for name in (
        "MIN_EPOCHS",
        "WINDOW",
        "SLOPE_MIN",
        "VAL_SLOPE_MIN",
        "DROP_MAX",
        "VARIATION_MAX",
        "REVERSALS_MIN",
        "FLAT",
        "VAL_RISE_MAX",
        "RISE_EPOCHS",
        "GAP_MAX",
        "GAIN_MIN",
        "TRAIN_DROP_MIN",
    )
}


@dataclass(frozen=True)
class FitDiagnosis:
    """A verdict (one of :data:`VERDICTS`), why, and the numbers it was decided on."""

    verdict: str
    reason: str
    monitor: str
    numbers: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """One log line: the verdict, the reason and the key numbers."""
        keys = ("monitor_slope", "monitor_variation", "loss_gap", "val_loss_rise")
        shown = [f"{k}={self.numbers[k]:.4g}" for k in keys if k in self.numbers]
        return f"fit diagnosis: {self.verdict.replace('_', ' ')}: {self.reason}" + (
            f" [{', '.join(shown)}]" if shown else ""
        )

    def as_dict(self) -> dict:
        return {
            "verdict": self.verdict,
            "reason": self.reason,
            "monitor": self.monitor,
            "numbers": self.numbers,
            "thresholds": THRESHOLDS,
        }


def _series(history: Mapping[str, Sequence[float | None]], key: str) -> np.ndarray | None:
    values = history.get(key)
    if not values:
        return None
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def _slope(values: np.ndarray) -> float:
    """Least-squares slope per epoch (0 for a single value)."""
    if values.size < 2:
        return 0.0
    return float(np.polyfit(np.arange(values.size, dtype=float), values, 1)[0])


def _reversals(changes: np.ndarray) -> int:
    signs = np.sign(changes[np.abs(changes) >= FLAT])
    return int(np.count_nonzero(signs[1:] != signs[:-1]))


def curve_numbers(
    history: Mapping[str, Sequence[float | None]], monitor: str, mode: str
) -> dict[str, float]:
    """The figures the verdict uses: ``epochs``; ``monitor_*`` (first, last, best and its
    epoch, gain, slope, variation and reversals over the window, largest one-epoch drop);
    ``train_loss``/``train_loss_drop``; ``val_loss*`` (last, minimum and its epoch, rise above
    it, relative slope); ``loss_gap`` (val - train, last epoch) and ``loss_gap_ratio``.

    Epoch numbers are 1-based. Monitor changes are oriented (larger is better; see module doc).
    """
    out: dict[str, float] = {}
    raw = _series(history, monitor)
    train, val = _series(history, "train/loss"), _series(history, "val/loss")
    n = 0 if raw is None else min(s.size for s in (raw, train, val) if s is not None)
    out["epochs"] = float(n)
    if n == 0:
        return out
    raw, train, val = (None if s is None else s[:n] for s in (raw, train, val))
    finite = all(np.isfinite(s).all() for s in (raw, train, val) if s is not None)
    out["finite"] = float(finite)
    if not finite:
        return out
    scale = 1.0 if mode == "max" else -(abs(raw[0]) or 1.0)
    score = raw / scale
    window = score[-min(WINDOW, n) :]
    changes = np.diff(window)
    out.update(
        monitor_first=float(raw[0]),
        monitor_last=float(raw[-1]),
        monitor_best=float(raw[int(np.argmax(score))]),
        monitor_best_epoch=float(np.argmax(score) + 1),
        monitor_gain=float(score.max() - score[0]),
        monitor_slope=_slope(window),
        monitor_variation=float(changes.std()) if changes.size else 0.0,
        monitor_reversals=float(_reversals(changes)),
        monitor_max_drop=float(max(0.0, -np.diff(score).min())) if n > 1 else 0.0,
        window=float(window.size),
    )
    if train is not None:
        out["train_loss"] = float(train[-1])
        out["train_loss_drop"] = float((train[0] - train[-1]) / (abs(train[0]) or 1.0))
    if val is not None:
        best = int(np.argmin(val))
        out.update(
            val_loss=float(val[-1]),
            val_loss_min=float(val[best]),
            val_loss_min_epoch=float(best + 1),
            val_loss_rise=float((val[-1] - val[best]) / (abs(val[best]) or 1.0)),
            val_loss_slope=float(_slope(val[-min(WINDOW, n) :]) / (abs(val[0]) or 1.0)),
        )
        if train is not None:
            out["loss_gap"] = float(val[-1] - train[-1])
            out["loss_gap_ratio"] = float(out["loss_gap"] / (abs(val[-1]) or 1.0))
            out["train_loss_change_since_val_min"] = float(train[-1] - train[best])
    return out


def _first_rule(x: dict[str, float], monitor: str, degenerate: bool) -> tuple[str, str]:
    """(verdict, reason) of the first rule in the module docstring's order that holds."""
    n = int(x["epochs"])
    if n < MIN_EPOCHS:
        return "too_few_epochs", (
            f"{n} epoch(s) of {monitor}; at least {MIN_EPOCHS} are needed to judge the curves"
        )
    if not x.get("finite", 1.0):
        return "unstable", "a loss or the monitored metric is not finite (NaN/inf)"
    w = int(x["window"])
    if x["monitor_max_drop"] >= DROP_MAX:
        return "unstable", (
            f"{monitor} fell by {x['monitor_max_drop']:.3f} in one epoch (limit {DROP_MAX}): "
            "try a lower optimizer.lr or a larger data.batch_size"
        )
    if x["monitor_variation"] >= VARIATION_MAX and x["monitor_reversals"] >= REVERSALS_MIN:
        return "unstable", (
            f"{monitor} zig-zags over the last {w} epochs (epoch-to-epoch changes vary by "
            f"{x['monitor_variation']:.3f}, {int(x['monitor_reversals'])} reversals): try a "
            "lower optimizer.lr or a larger data.batch_size"
        )
    if degenerate:
        return "under_fitting", "the selected model predicts (almost) only one class"
    rise, gap = x.get("val_loss_rise"), x.get("loss_gap_ratio")
    since_min = n - int(x.get("val_loss_min_epoch", n))
    if (
        rise is not None
        and rise >= VAL_RISE_MAX
        and since_min >= RISE_EPOCHS
        and x.get("train_loss_change_since_val_min", 0.0) < 0
    ):
        return "over_fitting", (
            f"val loss rose {rise:.0%} above its minimum at epoch "
            f"{int(x['val_loss_min_epoch'])} while train loss kept falling"
        )
    if gap is not None and gap >= GAP_MAX and x["val_loss_slope"] > -VAL_SLOPE_MIN:
        return "over_fitting", (
            f"train loss is {gap:.0%} below val loss and val loss has stopped falling"
        )
    if x["monitor_slope"] >= SLOPE_MIN or x.get("val_loss_slope", 0.0) <= -VAL_SLOPE_MIN:
        return "still_improving", (
            f"over the last {w} epochs {monitor} improves by {x['monitor_slope']:.3f}/epoch and "
            f"val loss changes by {x.get('val_loss_slope', 0.0):+.1%}/epoch: more epochs "
            "(trainer.max_epochs) would likely help"
        )
    if x["monitor_gain"] < GAIN_MIN:
        return "under_fitting", (
            f"{monitor} improved by only {x['monitor_gain']:.3f} over the run: raise "
            "optimizer.lr, train longer or use a larger model"
        )
    if x.get("train_loss_drop", 1.0) < TRAIN_DROP_MIN:
        return "under_fitting", (
            f"train loss fell by only {x['train_loss_drop']:.1%} over the run: raise "
            "optimizer.lr, train longer or use a larger model"
        )
    return "good_fit", (
        f"{monitor} has levelled off (best {x['monitor_best']:.4g} at epoch "
        f"{int(x['monitor_best_epoch'])}), val loss within {rise or 0.0:.0%} of its minimum"
    )


def diagnose(
    history: Mapping[str, Sequence[float | None]],
    monitor: str = "val/balanced_accuracy",
    mode: str = "max",
    degenerate: bool = False,
) -> FitDiagnosis:
    """Judge a run's per-epoch ``history`` on ``monitor`` (``mode`` max or min).

    ``degenerate`` says the selected model predicts (almost) one class (the trainer's check).
    A history without ``monitor`` is judged on ``val/loss`` (min).
    """
    if not history.get(monitor) and history.get("val/loss"):
        monitor, mode = "val/loss", "min"
    numbers = curve_numbers(history, monitor, mode)
    verdict, reason = _first_rule(numbers, monitor, degenerate)
    clean = {k: v for k, v in numbers.items() if math.isfinite(v)}
    return FitDiagnosis(verdict, reason, monitor, clean)
