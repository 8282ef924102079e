"""The ``backend`` section: the predictor end to end (JPEG file -> probabilities) on torch fp32,
torch bf16 autocast, torch compiled (compile time reported apart) and ONNX Runtime fp32 and int8,
for one image and TTA (``tta`` group, e.g. medium: 8 views in one forward); and evaluation with
that TTA the way ``derm_exp.evaluate`` runs it (its DataLoader, ``data.num_workers`` workers
decoding while the network runs, every view of a batch in one backend call).

Every variant runs the same network and weights in one process with the same thread count, and
the single-image and TTA timings are interleaved round by round (one call of each variant per
round, medians reported), so a machine whose load changes during the run skews them alike.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from derm_exp.data.metadata import CLASSES, load_metadata
from derm_exp.data.synthetic import resolve_data_root
from derm_exp.perf.timing import median

log = logging.getLogger(__name__)
GOAL = 0.55  # issue 18: ONNX Runtime fp32 <= 0.55 x torch fp32 eager (one image, TTA)
EVAL_GOAL = 1.8  # issue 18: evaluation with TTA medium >= 1.8 x faster than torch

ROWS = (
    ("export_fp32_s", "export + verify, ONNX fp32", "s"),
    ("export_int8_s", "export + quantize + verify, ONNX int8", "s"),
    ("compile_s", "torch.compile: first image + first TTA", "s"),
)
VARIANT_ROWS = (
    ("single_ms", "1 image", "ms"),
    ("tta_ms", "TTA", "ms"),
    ("eval_tta_img_s", "evaluation with TTA", "img/s"),
    ("eval_forward_share", "evaluation: share of time in the network", ""),
    ("max_abs_prob_diff", "max |p - p(torch fp32)|", ""),
)


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows of :func:`derm_exp.perf.report.table` for this section."""
    section = result.get("backend")
    if not section:
        return []
    rows = [(f"backend.{k}", f"backend: {label}", u) for k, label, u in ROWS]
    for name in section["variants"]:
        rows += [(f"backend.variants.{name}.{k}", f"[{name}] {lb}", u) for k, lb, u in VARIANT_ROWS]
    rows += [
        ("backend.ratios.ort_fp32_single", "ORT fp32 / torch fp32, 1 image", "x"),
        ("backend.ratios.ort_fp32_tta", "ORT fp32 / torch fp32, TTA", "x"),
        ("backend.ratios.ort_fp32_eval_speedup", "ORT fp32 / torch fp32, evaluation img/s", "x"),
    ]
    return rows


def _predictors(cfg: DictConfig, loaded: Any, folder: Path, threads: int) -> tuple[dict, dict]:
    """The predictors to compare, and how long each export took."""
    from derm_exp.exporting.pipeline import export_loaded
    from derm_exp.inference.predictor import SkinLesionPredictor

    cpu = torch.device("cpu")
    out = {
        "torch_fp32": SkinLesionPredictor(loaded, cpu),
        "torch_bf16": SkinLesionPredictor(loaded, cpu, amp="bf16"),
    }
    seconds: dict[str, float] = {}
    for quantize in (None, "int8"):
        name = quantize or "fp32"
        start = time.perf_counter()
        path = export_loaded(
            loaded, None, {}, folder / f"{name}.onnx", quantize=quantize, threads=threads
        ).path
        seconds[f"export_{name}_s"] = time.perf_counter() - start
        out[f"ort_{name}"] = SkinLesionPredictor(
            loaded, cpu, backend="onnxruntime", onnx_path=path, backend_threads=threads
        )
    if cfg.benchmark.get("backend_compile", True):
        out["torch_compiled"] = SkinLesionPredictor(loaded, cpu, compile=True)
    return out, seconds


def _interleaved(calls: dict[str, Callable[[], Any]], warmup: int, repeats: int) -> dict:
    """Median seconds per call of each entry, one call of each per round."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: median(t) for name, t in times.items()}


def backend_section(cfg: DictConfig, model: torch.nn.Module, size: int) -> dict[str, Any]:
    """Figures of every backend (see the module docstring); CPU only."""
    from derm_exp.exporting.runtime import default_threads
    from derm_exp.inference.loading import LoadedModel

    b = cfg.benchmark
    threads = int(b.get("threads") or default_threads())
    torch.set_num_threads(threads)
    frame = load_metadata(resolve_data_root(cfg.data), cfg.data.metadata_file)
    frame = frame.iloc[: int(b.get("backend_images") or cfg.data.eval_batch_size)]
    paths = [str(p) for p in frame["path"]]
    config = {"model": {"name": str(cfg.model.name)}}
    loaded = LoadedModel(model.eval(), list(CLASSES), dict(model.data_config), 1.0, config, None)
    mode, views = str(cfg.tta.mode), len(cfg.tta.views)
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        predictors, out = _predictors(cfg, loaded, Path(tmp), threads)
        out |= {"threads": threads, "tta_mode": mode, "tta_views": views, "images": len(paths)}
        out |= {"eval_batch_size": int(cfg.data.eval_batch_size)}
        out["num_workers"] = int(cfg.data.num_workers)
        compiled = predictors.get("torch_compiled")
        if compiled is not None:  # each input shape compiles once: 1 image, then the TTA batch
            start = time.perf_counter()
            compiled.predict(paths[0])
            compiled.predict_with_tta(paths[0], mode)
            out["compile_s"] = time.perf_counter() - start
        warmup, repeats = int(b.warmup), int(b.repeats)
        single = _interleaved(
            {n: _call(p.predict, paths[0]) for n, p in predictors.items()}, warmup, repeats
        )
        tta = _interleaved(
            {n: _call(p.predict_with_tta, paths[0], mode) for n, p in predictors.items()},
            warmup,
            repeats,
        )
        out["variants"] = {
            name: {
                "single_ms": single[name] * 1000,
                "tta_ms": tta[name] * 1000,
                **_evaluation(cfg, p, frame, 1 if name == "torch_compiled" else None),
                **_agreement(p, predictors["torch_fp32"], paths),
            }
            for name, p in predictors.items()
        }
    out["ratios"] = _ratios(out["variants"])
    return out


def _call(fn: Callable[..., Any], *args: Any) -> Callable[[], Any]:
    return lambda: fn(*args)


def _evaluation(cfg: DictConfig, predictor: Any, frame: Any, batch: int | None) -> dict:
    """Images per second of ``derm_exp.evaluate``'s prediction path with TTA over ``frame``
    (median of ``benchmark.eval_passes`` passes after a one-batch warm-up), and the share of
    that time spent in the network. ``data.eval_batch_size`` images a batch (the compiled model:
    ``batch`` = 1 image, whose TTA views are the shape it already compiled)."""
    from omegaconf import OmegaConf

    from derm_exp.evaluate import evaluation_loader
    from derm_exp.runtime import Precision
    from derm_exp.training.loop import StepContext, predict_logits

    size = batch or int(cfg.data.eval_batch_size)
    data = {"batch_size": size, "num_workers": int(cfg.data.num_workers)}
    labels = np.zeros(len(frame), dtype=np.int64)
    views = list(cfg.tta.views)
    # the same context as derm_exp.evaluate.load_model: fp32 (bf16 autocast is the backend's)
    ctx = StepContext(
        torch.device("cpu"), Precision(None, False), predictor.backend_name == "torch"
    )
    net = _TimedNetwork(predictor.backend)
    loader_cfg = OmegaConf.create({"data": data})
    predict_logits(
        net, evaluation_loader(frame[:size], labels[:size], predictor, loader_cfg), ctx, views=views
    )
    times, shares = [], []
    for _ in range(int(cfg.benchmark.get("eval_passes", 2))):
        net.seconds = 0.0
        loader = evaluation_loader(frame, labels, predictor, loader_cfg)
        start = time.perf_counter()
        predict_logits(net, loader, ctx, views=views, desc="benchmark evaluation")
        times.append(time.perf_counter() - start)
        shares.append(net.seconds / times[-1])
    return {
        "eval_batch_size": size,
        "eval_tta_img_s": len(frame) / median(times),
        "eval_forward_share": median(shares),
    }


class _TimedNetwork:
    """A backend that adds up the seconds spent in its calls."""

    def __init__(self, backend: Any) -> None:
        self.backend, self.seconds = backend, 0.0

    def eval(self) -> _TimedNetwork:
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.backend(x)
        self.seconds += time.perf_counter() - start
        return out


def _agreement(predictor: Any, reference: Any, paths: list[str]) -> dict[str, Any]:
    """How far the probabilities are from torch fp32's on the benchmark images."""
    p, ref = predictor.predict_proba(paths), reference.predict_proba(paths)
    return {
        "max_abs_prob_diff": float(np.abs(p - ref).max()),
        "argmax_agreement": float((p.argmax(1) == ref.argmax(1)).mean()),
        "approximate": bool(predictor.approximate),
    }


def _ratios(variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """ONNX Runtime fp32 and int8 against torch fp32 eager, and whether issue 18's goal is met."""
    base, ort = variants["torch_fp32"], variants["ort_fp32"]
    out = {
        "ort_fp32_single": ort["single_ms"] / base["single_ms"],
        "ort_fp32_tta": ort["tta_ms"] / base["tta_ms"],
        "ort_fp32_eval_speedup": ort["eval_tta_img_s"] / base["eval_tta_img_s"],
        "ort_int8_single": variants["ort_int8"]["single_ms"] / base["single_ms"],
        "ort_int8_tta": variants["ort_int8"]["tta_ms"] / base["tta_ms"],
        "ort_int8_eval_speedup": variants["ort_int8"]["eval_tta_img_s"] / base["eval_tta_img_s"],
        "goal": GOAL,
    }
    out["goal_met"] = bool(out["ort_fp32_single"] <= GOAL and out["ort_fp32_tta"] <= GOAL)
    out["eval_goal"] = EVAL_GOAL
    out["eval_goal_met"] = bool(out["ort_fp32_eval_speedup"] >= EVAL_GOAL)
    return out
