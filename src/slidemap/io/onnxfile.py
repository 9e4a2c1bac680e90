"""ONNX export of a model file, for ONNX Runtime or any other runtime.

The graph is the network proper plus its sigmoid: normalised ``x`` (B, C, H, W) float32 in,
probabilities ``prob`` (B, 1, H, W) out, with batch, height and width dynamic. H and W must be
multiples of the model's stride (stored as ``stride`` in the metadata): padding up to it is left to
the runtime (``pad_to_stride``) because a traced pad would freeze one input size into the graph.

The metadata also holds the model's JSON sidecar (``slidemap``: channels, normalisation,
threshold) and the SHA-256 of the weights it was exported from, so an export lying beside a
retrained model is recognised as stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from torch import nn

from slidemap.errors import SlidemapError
from slidemap.io import jsontext
from slidemap.io.atomic import atomic_path
from slidemap.io.modelfile import ModelBundle, model_paths
from slidemap.models import AnySizeModel

OPSET = 17  # ONNX Runtime 1.16+ runs it; the TorchScript exporter writes it reliably
TOLERANCE = 1e-3  # max |Δp| between ONNX Runtime and torch fp32 accepted at export


class _Graph(nn.Module):
    """The network without its any-size padding wrapper, ending in a sigmoid."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model = self.model
        return torch.sigmoid(model.forward_padded(x) if isinstance(model, AnySizeModel)
                             else model(x))


@contextlib.contextmanager
def _native_output_silenced() -> Iterator[None]:
    """The TorchScript exporter logs the whole graph from C++ to the process's stderr when it
    fails (its logging switch is stuck on in torch 2.13): send fds 1 and 2 to /dev/null."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        for fd, copy in zip((1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


def model_stride(model: nn.Module) -> int:
    return model.stride if isinstance(model, AnySizeModel) else 1


def pad_to_stride(x: np.ndarray, stride: int) -> np.ndarray:
    """Pad (B, C, H, W) at the bottom and right up to a multiple of ``stride``, as the torch
    models do (``slidemap.models.blocks.pad_to_multiple``): reflect, or replicate when too small."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if not (ph or pw):
        return x
    mode: Literal["reflect", "edge"] = "reflect" if ph < h and pw < w else "edge"
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode=mode)


def weights_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def onnx_path_for(model_path: Path) -> Path:
    """Where ``slidemap export`` puts a model's ONNX file by default: beside it, ``NAME.onnx``."""
    weights, _ = model_paths(model_path)
    return weights.with_suffix(".onnx")


def export_onnx(bundle: ModelBundle, out: Path, overwrite: bool = True) -> Path:
    """Export ``bundle`` to ``out`` and check ONNX Runtime against torch fp32 on two sizes;
    without ``overwrite`` an existing ``out`` is never replaced."""
    # torch's type stubs of Module.to omit memory_format, which it takes
    model = bundle.model.eval().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    stride = model_stride(model)
    channels = len(bundle.inputs.channels)
    graph = _Graph(model).eval()
    buffer = io.BytesIO()
    example = torch.zeros(1, channels, 2 * stride, 2 * stride)
    try:
        with warnings.catch_warnings(), _native_output_silenced():  # deprecation, trace notes
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph, (example,), buffer,  # type: ignore[arg-type]  # stubs: paths only
                dynamo=False, opset_version=OPSET,
                input_names=["x"], output_names=["prob"],
                dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"},
                              "prob": {0: "batch", 2: "height", 3: "width"}})
    except Exception as exc:  # the exporter raises many types; all mean "cannot export"
        raise SlidemapError(f"model {bundle.path} ({bundle.architecture}) cannot be exported to "
                            f"ONNX ({_one_line(exc)}): run it with torch, slidemap's default "
                            "backend (predict without --backend onnx)") from exc
    proto = onnx.load_from_string(buffer.getvalue())
    metadata = {"slidemap": jsontext.dumps(bundle.sidecar()), "stride": str(stride),
                "weights_sha256": weights_digest(bundle.path) if bundle.path else ""}
    onnx.helper.set_model_props(proto, metadata)
    _verify(graph, proto.SerializeToString(), channels, stride, bundle)
    with atomic_path(out, overwrite) as tmp:
        onnx.save(proto, str(tmp))
    return out


def _verify(graph: nn.Module, model_bytes: bytes, channels: int, stride: int,
            bundle: ModelBundle) -> None:
    """A graph with a size frozen in by tracing would differ at another size: refuse it."""
    import onnxruntime as ort

    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in ((1, channels, 3 * stride, 2 * stride), (2, channels, 2 * stride, 4 * stride)):
        x = rng.standard_normal(shape).astype(np.float32)
        with torch.inference_mode():
            expected = graph(torch.from_numpy(x)).numpy()
        got = session.run(None, {"x": x})[0]
        if got.shape != expected.shape or not np.allclose(got, expected, atol=TOLERANCE):
            raise SlidemapError(f"model {bundle.path} ({bundle.architecture}) does not export to "
                                "ONNX faithfully for every input size: run it with torch, "
                                "slidemap's default backend (predict without --backend onnx)")


# what reading an exported file raises when it is unreadable, truncated or no ONNX (a text
# file's bytes give UnicodeDecodeError, a ValueError; a damaged protobuf DecodeError)
READ_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, DecodeError)


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of an exported file (without loading its weights)."""
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def is_current(onnx_file: Path, bundle: ModelBundle) -> bool:
    """True when ``onnx_file`` exists and was exported from exactly ``bundle``'s weights."""
    if bundle.path is None or not onnx_file.is_file():
        return False
    try:
        digest = read_metadata(onnx_file).get("weights_sha256")
    except (OSError, DecodeError):
        return False
    return digest == weights_digest(bundle.path)


def _one_line(exc: Exception) -> str:
    """The exporter's reason without its graph dump ("[Caused by the value ...]") or its plea
    for a pull request."""
    lines = str(exc).strip().splitlines()
    reason = lines[0].split(" [Caused by")[0] if lines else type(exc).__name__
    return reason.split(". Please feel free")[0]
