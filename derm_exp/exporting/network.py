"""``torch.onnx.export`` of a classifier network: TorchScript exporter, opset 17, dynamic batch;
a metadata-fusion network gets its second input, the (N, M) encoded metadata."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch

from derm_exp.exporting.metadata import INPUT_NAME, METADATA_INPUT_NAME, OPSET, OUTPUT_NAME
from derm_exp.exporting.runtime import OnnxModelError


def export_network(
    model: torch.nn.Module,
    path: str | Path,
    input_size: list[int],
    metadata_dim: int | None = None,
) -> Path:
    """Write ``model`` (fp32, eval mode, on the CPU) as ONNX to ``path``.

    ``dynamo=False``: the TorchScript-based exporter handles every timm backbone and head here
    and gives a graph ONNX Runtime optimises well (issue 18's measurement); the batch dimension
    is dynamic, the image size fixed (``input_size``, C x H x W). With ``metadata_dim`` (a
    metadata-fusion network) the graph takes ``(image, metadata)``, the latter (N,
    ``metadata_dim``) float32, batch dynamic too. The caller's model is not modified (a CPU
    fp32 copy is exported).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = copy.deepcopy(model).to("cpu", torch.float32, memory_format=torch.contiguous_format)
    net.eval()
    args: tuple[torch.Tensor, ...] = (torch.zeros(2, *[int(s) for s in input_size]),)
    names = [INPUT_NAME]
    if metadata_dim is not None:
        args += (torch.zeros(2, int(metadata_dim)),)
        names.append(METADATA_INPUT_NAME)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation note
            torch.onnx.export(
                net,
                args,
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
    except Exception as exc:  # an operator the exporter cannot convert: name it
        raise OnnxModelError(
            f"torch.onnx.export failed for this network: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300] if str(exc) else ''}"
        ) from exc
    return path
