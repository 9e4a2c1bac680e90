"""Where a network runs: PyTorch (bf16 or fp32, optionally compiled) or ONNX Runtime.

A backend turns a batch of normalised windows into probabilities. The Predictor above it
(ensembles, TTA, normalisation) calls every backend the same way, so a model file runs unchanged
on either.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np
import torch
from torch import nn

from slidemap.errors import SlidemapError, first_line
from slidemap.extras import require
from slidemap.infer.runtime import predict_batch, prepare_for_inference, resolve_precision
from slidemap.io.modelfile import ModelBundle
from slidemap.schema.values import BACKENDS, PRECISIONS


class Backend(Protocol):
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (B, H, W) float32 of normalised windows (B, C, H, W)."""
        ...


class TorchBackend:
    """The model in PyTorch: bf16 autocast or fp32 (``auto``: by the CPU), channels_last,
    optionally ``torch.compile``d (a minute or more of compiling on first use; worth it only
    for long runs)."""

    def __init__(self, model: nn.Module, precision: str = "auto", compile: bool = False) -> None:
        if precision not in PRECISIONS:
            raise SlidemapError(f"precision {precision!r} is not known: use one of "
                                f"{', '.join(PRECISIONS)}")
        self.model: nn.Module = prepare_for_inference(model)
        self.compile_errors: tuple[type[Exception], ...] = ()
        if compile:
            self.model = torch.compile(self.model, dynamic=False)  # type: ignore[assignment]
            # torch.compile builds the model on its first call, with a C++ compiler
            self.compile_errors = (torch._dynamo.exc.BackendCompilerFailed,)
        self.precision = resolve_precision(precision)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        try:
            return predict_batch(self.model, batch, self.precision)
        except self.compile_errors as exc:
            cause = exc.inner_exception  # type: ignore[attr-defined]
            raise SlidemapError(f"--compile failed: torch.compile cannot build the model "
                                f"({type(cause).__name__}: {first_line(cause)}): run without "
                                "--compile, or install a C++ compiler (g++) that torch finds"
                                ) from exc


def runtime_errors(ort: ModuleType) -> tuple[type[Exception], ...]:
    """ONNX Runtime's own exceptions (Fail, InvalidGraph, InvalidArgument, NoSuchFile,
    RuntimeException, …): they share no base class but Exception, and only they mean that the
    file cannot be run; a bug, a MemoryError or a SlidemapError must still show as itself."""
    state = ort.capi.onnxruntime_pybind11_state
    return tuple(value for value in vars(state).values()
                 if isinstance(value, type) and issubclass(value, Exception))


class OnnxBackend:
    """An exported model in ONNX Runtime (fp32), on as many threads as torch would use."""

    def __init__(self, path: Path) -> None:
        ort = require("onnxruntime", "onnx", "--backend onnx")

        from slidemap.io.onnxfile import READ_ERRORS, read_metadata

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.path = path
        self.errors = runtime_errors(ort)
        try:
            self.stride = int(read_metadata(path).get("stride", "1"))
            self.session = ort.InferenceSession(str(path), options,
                                                providers=["CPUExecutionProvider"])
        except (*self.errors, *READ_ERRORS) as exc:
            raise self._unrunnable(exc) from exc

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        from slidemap.io.onnxfile import pad_to_stride

        h, w = batch.shape[-2:]
        x = pad_to_stride(np.ascontiguousarray(batch, dtype=np.float32), self.stride)
        try:  # a graph can load and fail only when run (a shape it cannot take)
            return self.session.run(None, {"x": x})[0][:, 0, :h, :w]
        except self.errors as exc:
            raise self._unrunnable(exc) from exc

    def _unrunnable(self, exc: Exception) -> SlidemapError:
        """The one-line error of a file that ONNX Runtime cannot load or run."""
        return SlidemapError(f"ONNX file {self.path} cannot be run ({first_line(exc)}): export "
                             "the model again (slidemap export MODEL --overwrite)")


def make_backend(bundle: ModelBundle, backend: str = "torch", precision: str = "auto",
                 compile: bool = False) -> Backend:
    """The backend ``backend`` for ``bundle``; ONNX uses the up-to-date export beside the model
    file (``slidemap export``) or exports one on the fly into a temporary folder."""
    if backend == "torch":
        return TorchBackend(bundle.model, precision, compile)
    if backend != "onnx":
        raise SlidemapError(f"backend {backend!r} is not known: use one of {', '.join(BACKENDS)}")
    if compile:
        raise SlidemapError("--compile applies to the torch backend, not to --backend onnx")
    for module in ("onnx", "onnxruntime"):
        require(module, "onnx", "--backend onnx")
    from slidemap.io.onnxfile import export_onnx, is_current, onnx_path_for

    if bundle.path is not None and is_current(onnx_path_for(bundle.path), bundle):
        return OnnxBackend(onnx_path_for(bundle.path))
    with tempfile.TemporaryDirectory(prefix="slidemap-onnx-") as tmp:
        return OnnxBackend(export_onnx(bundle, Path(tmp) / "model.onnx"))
