"""``torch.onnx.export`` of a classifier network: TorchScript exporter, opset 17, dynamic batch."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

from derm_exp.exporting.metadata import INPUT_NAME, OPSET, OUTPUT_NAME
from derm_exp.exporting.runtime import OnnxModelError


def export_network(model: torch.nn.Module, path: str | Path, input_size: list[int]) -> Path:
    """Write ``model`` (fp32, eval mode, on the CPU) as ONNX to ``path``.

    ``dynamo=False``: the TorchScript-based exporter handles every timm backbone and head here
    and gives a graph ONNX Runtime optimises well (issue 18's measurement); the batch dimension
    is dynamic, the image size fixed (``input_size``, C x H x W). The caller's model is not
    modified (a CPU fp32 copy is exported).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    net.eval()
    dummy = torch.zeros(2, *[int(s) for s in input_size])
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation note
            torch.onnx.export(
                net,
                (dummy,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as exc:  # an operator the exporter cannot convert: name it
        raise OnnxModelError(
            f"torch.onnx.export failed for this network: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300] if str(exc) else ''}"
        ) from exc
    return path
