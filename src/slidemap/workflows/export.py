"""``slidemap export``: a model file to ONNX, or (``--weights``) stored again with smaller
weights."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from slidemap.extras import require
from slidemap.io.atomic import check_outputs, make_output_dir
from slidemap.io.modelfile import (
    check_weights_dtype,
    load_model,
    model_card,
    model_paths,
    save_model,
)


@dataclass(frozen=True)
class OnnxExport:
    onnx: Path
    opset: int
    stride: int  # input height and width must be multiples of it
    channels: int  # normalised input channels


@dataclass(frozen=True)
class StoredWeights:
    model: Path
    weights_dtype: str
    bytes: int
    bytes_before: int


def export_onnx(model: Path, out: Path | None = None, overwrite: bool = False) -> OnnxExport:
    """Export ``model`` to ONNX at ``out`` (default: NAME.onnx beside it)."""
    for module in ("onnx", "onnxruntime"):
        require(module, "onnx", "exporting to ONNX")
    # After the check: onnx is an optional extra, imported only once it is known to be there.
    from slidemap.io import onnxfile

    bundle = load_model(model)
    target = out or onnxfile.onnx_path_for(model)
    check_outputs([target], list(model_paths(model)), overwrite)
    make_output_dir(target.parent)
    onnxfile.export_onnx(bundle, target, overwrite)
    return OnnxExport(target, onnxfile.OPSET, onnxfile.model_stride(bundle.model),
                      len(bundle.inputs.channels))


def store_weights(model: Path, out: Path, weights_dtype: str,
                  overwrite: bool = False) -> StoredWeights:
    """Save ``model`` again at ``out`` with its weights stored as ``weights_dtype`` (float32,
    float16, int8 or int4): the same network and sidecar in a smaller file."""
    check_weights_dtype(weights_dtype)  # an unknown name fails before anything is read
    bundle = load_model(model)
    inputs, targets = list(model_paths(model)), list(model_paths(out))
    check_outputs(targets, inputs, overwrite)
    make_output_dir(targets[0].parent)
    written = save_model(replace(bundle, weights_dtype=weights_dtype, card=model_card(model)),
                         out, overwrite)
    return StoredWeights(written, weights_dtype, written.stat().st_size,
                         inputs[0].stat().st_size)
