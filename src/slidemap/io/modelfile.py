"""Model files that cannot run code when loaded: safetensors weights plus a JSON sidecar.

``NAME.safetensors`` holds tensors only; ``NAME.json`` holds the architecture, input channels
and how to build them, normalisation statistics, the decision threshold and training
provenance. Nothing is ever unpickled: a pickle-based checkpoint (``.pt``, ``.pth``, ...) is
refused.

Weights may be stored as float16 (``weights_dtype``), which halves the file for a rounding of
about 1e-3 relative per weight, or as int8, which quarters it: each convolution kernel is stored
as whole numbers -127..127 times one float32 scale per output channel (``KEY`` and
``KEY.int8_scale``; 1-D tensors such as biases and BatchNorm statistics stay float32). int4
goes further for the largest kernels only (at least ``INT4_MIN_WEIGHTS`` weights: the deepest
layers, which hold most of a network's weights): whole numbers -7..7, two to a byte (``KEY`` as
uint8, low nibble first, and ``KEY.int4_scale``); smaller kernels stay int8, because 4 bits
everywhere cost F1 on new ground (benchmarks/experiments.md). However stored, weights are loaded
into a float32 model, so prediction runs exactly as with a float32 file of those rounded weights.

A file may hold an ensemble: ``members`` networks of one architecture whose probabilities are
averaged (:class:`slidemap.models.ProbabilityAverage`), their weights under ``members.K.``.

The sidecar also says how the model is best run (``predict``: window size, overlap, scales), so
that a plain ``slidemap predict`` runs each model the way its cross-region figures were measured.

A model file comes from anywhere, so loading trusts neither file: every sidecar field is typed,
range-checked and capped (:mod:`slidemap.io.sidecar`), and the tensor shapes in the weights'
header are compared with those the sidecar's network would have, worked out on torch's ``meta``
device (no memory; its building stops once the network outgrows the file's tensors), before the
network is built or a tensor read (keys of files saved before the encoder → decoder → head
contract renamed first: :mod:`slidemap.models.legacy`). The sidecar records the SHA-256 of its
weights, so a pair that did not come from one save (a failed ``--overwrite``, a copied file) is
refused; weights that are not finite, or of a type slidemap never writes for them (float8,
integers or bool for a float weight), are refused too.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from slidemap.data.channels import InputSpec
from slidemap.errors import SlidemapError, first_line
from slidemap.io import jsontext
from slidemap.io.atomic import staged
from slidemap.io.sidecar import (
    FORMAT_VERSION,
    SIDECAR_MAX_BYTES,
    NewerFormat,
    check_scales,
    check_sidecar,
    header_shapes,
    read_header,
)
from slidemap.models import build_network
from slidemap.models.legacy import current_keys
from slidemap.schema.values import MAX_TILE, MIN_TILE, WEIGHTS_DTYPES

PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"}
ONNX_SUFFIX = ".onnx"  # an export (slidemap export), not a model file: refused by name
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16}
# how a floating-point tensor may be stored unquantised: float8 has no isfinite (a traceback)
# and text, bool or integers would be cast into weights that no training made
STORED_FLOATS = {torch.float16, torch.bfloat16, torch.float32, torch.float64}
INT8_SCALE = ".int8_scale"  # suffix of the per-output-channel scale of an int8 tensor
INT4_SCALE = ".int4_scale"  # the same for a kernel stored in 4 bits, two weights to a byte
INT4_MIN_WEIGHTS = 2**18  # int4: kernels at least this large get 4 bits, smaller ones 8
RUN_CONFIG_SUFFIXES = (".yaml", ".yml")  # a run config given where a model file is asked for
# The shipped models, which every MODEL argument (and a config's init) may name bare: kept here,
# below every layer that reads a model, so that each resolves a name the same way. An installed
# wheel carries models/ as slidemap/shipped_models (pyproject.toml); a source checkout, editable
# install included, reads models/ itself.
INSTALLED_MODELS = Path(__file__).resolve().parents[1] / "shipped_models"
MODELS_DIR = INSTALLED_MODELS if INSTALLED_MODELS.is_dir() \
    else Path(__file__).resolve().parents[3] / "models"


@dataclass(frozen=True)
class PredictDefaults:
    """How prediction runs the model unless told otherwise: windows of ``tile`` working px
    overlapping by ``overlap``, each predicted at every scale in ``scales`` (1.0: the working
    resolution; 0.5: the window shrunk to half its side) and the probabilities averaged."""

    tile: int = 256
    overlap: int = 64
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        for name in ("tile", "overlap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0 \
                    or (name == "tile" and not MIN_TILE <= value <= MAX_TILE):
                raise SlidemapError(f"predict {name} must be an integer (tile from {MIN_TILE} "
                                    f"to {MAX_TILE}), got {value!r}")
        if self.overlap >= self.tile:
            raise SlidemapError(f"predict overlap must be smaller than the tile ({self.tile}), "
                                f"got {self.overlap!r}")
        object.__setattr__(self, "scales", check_scales(self.scales))

    def to_dict(self) -> dict:
        return {"tile": self.tile, "overlap": self.overlap, "scales": list(self.scales)}


def common_setting(defaults: list[PredictDefaults], name: str, option: str) -> Any:
    """The ensemble members' one value of the prediction setting ``name`` (tile, overlap,
    scales). Members that differ are refused, naming ``option``: one grid of windows serves
    them all, and taking the first member's made the map depend on the order of --model."""
    values = [getattr(d, name) for d in defaults]
    if any(value != values[0] for value in values[1:]):
        listed = ", ".join(str(list(v)) if isinstance(v, tuple) else str(v) for v in values)
        raise SlidemapError(f"ensemble members predict with different {name} ({listed}, in "
                            f"--model order): pass {option} to choose one for all")
    return values[0]


@dataclass
class ModelBundle:
    """A built model with everything prediction needs besides the rasters."""

    model: nn.Module
    architecture: str
    width: int
    options: dict
    inputs: InputSpec
    mean: list[float]
    std: list[float]
    threshold: float = 0.5
    provenance: dict = field(default_factory=dict)
    path: Path | None = None  # where it was loaded from, if it was
    weights_dtype: str = "float32"  # how the file stores floating-point tensors
    predict: PredictDefaults = field(default_factory=PredictDefaults)
    members: int = 1  # networks averaged (an ensemble), each ``architecture`` at ``width``
    # what the model's card says (``new_ground``...): kept only by a copy of the same network
    # (``slidemap export --weights``), never by a model trained or adapted from it
    card: dict = field(default_factory=dict)

    def sidecar(self) -> dict:
        return {
            "format": "slidemap-model",
            "format_version": FORMAT_VERSION,
            "architecture": self.architecture,
            "width": self.width,
            "members": self.members,
            "options": self.options,
            "in_channels": len(self.inputs.channels),
            "inputs": self.inputs.to_dict(),
            "channels": self.inputs.channels,
            "normalisation": {"mean": self.mean, "std": self.std},
            "threshold": self.threshold,
            "predict": self.predict.to_dict(),
            "weights_dtype": self.weights_dtype,
            "provenance": self.provenance,
            **({"card": self.card} if self.card else {}),
        }


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """The (weights, sidecar) pair for ``path`` given with either suffix or none."""
    path = Path(path)
    if path.suffix in {".safetensors", ".json"}:
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def output_model_paths(path: str | Path, option: str = "--out") -> tuple[Path, Path]:
    """:func:`model_paths` of a model file to write, or a one-line error if ``path`` is a
    folder: its name with the suffixes added was written beside the folder, not in it."""
    if Path(path).is_dir():
        raise SlidemapError(f"{option} {path} is a folder: name the model file to write, e.g. "
                            f"{Path(path) / 'model.safetensors'}")
    return model_paths(path)


def is_bare_name(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a name with no folder part (as a Path has it: ``./NAME`` is
    ``NAME``, so a path resolved once resolves the same way again)."""
    path = Path(path)
    return len(path.parts) == 1 and not path.is_absolute()


def model_source(path: str | os.PathLike[str]) -> Path:
    """The model file a MODEL argument names: a bare name that is no model file here
    (``NAME.safetensors`` or ``NAME.json`` in the current folder) is the shipped model of that
    name, given as an absolute path, so a user need not type the folder a wheel keeps them in
    (site-packages); anything else, or a name shipped nowhere, as given."""
    path = Path(path)
    if not is_bare_name(path) or any(p.exists() for p in model_paths(path)):
        return path
    shipped = MODELS_DIR / path.name
    return shipped if all(p.is_file() for p in model_paths(shipped)) else path


def source_paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """:func:`model_paths` of a model to read, which may be a shipped model's bare name: the
    files no output may replace."""
    return model_paths(model_source(path))


def shipped_names() -> list[str]:
    """The names of the shipped models, which a MODEL argument may give bare."""
    return sorted(p.stem for p in MODELS_DIR.glob("*.safetensors"))


def weights_file(path: str | os.PathLike[str]) -> Path:
    """The weights file of a model named by either suffix or none, or a shipped model's bare
    name (:func:`model_source`): the file whose SHA-256 and path the outputs record (the
    sidecar's, or a path that is no file, would record the wrong hash or none). A pickle
    checkpoint's, an ONNX export's, a run config's or a folder's name is kept as given, for
    :func:`load_model` to refuse by name."""
    path = model_source(path)
    kept = path.suffix.lower() in (*PICKLE_SUFFIXES, ONNX_SUFFIX, *RUN_CONFIG_SUFFIXES) \
        or path.is_dir()
    return path if kept else model_paths(path)[0]


def save_model(bundle: ModelBundle, path: str | Path, overwrite: bool = True,
               companions: dict[Path, str] | None = None) -> Path:
    """Write weights and sidecar as one set (both appear, or neither is replaced), with any
    ``companions`` (path: text, e.g. a run's summary); the sidecar records the weights' SHA-256
    so that a mismatched pair is refused at load. Without ``overwrite`` an existing model file
    is never replaced. Returns the weights path."""
    weights_path, sidecar_path = model_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    data = save(stored_state(bundle.model, bundle.weights_dtype),
                metadata={"format": "slidemap-model"})
    sidecar = {**bundle.sidecar(), "weights_sha256": hashlib.sha256(data).hexdigest()}
    texts = {sidecar_path: jsontext.dumps(sidecar, indent=2) + "\n", **(companions or {})}
    with staged({"weights": weights_path, **{str(p): p for p in texts}}, overwrite) as tmp:
        tmp["weights"].write_bytes(data)
        for target, text in texts.items():
            tmp[str(target)].write_text(text)
    return weights_path


def check_weights_dtype(name: str) -> str:
    """``name`` if it is a known ``weights_dtype``; unknown names are refused."""
    if name not in WEIGHTS_DTYPES:
        raise SlidemapError(f"weights_dtype {name!r} is not known: use "
                            f"{' or '.join(WEIGHTS_DTYPES)}")
    return name


def stored_state(model: nn.Module, weights_dtype: str) -> dict[str, torch.Tensor]:
    """The state dict as written: floating tensors as ``weights_dtype``, others as they are."""
    check_weights_dtype(weights_dtype)
    state = {}
    for key, value in model.state_dict().items():
        tensor = value.detach()
        if tensor.is_floating_point() and weights_dtype in ("int8", "int4"):
            four_bit = weights_dtype == "int4" and tensor.numel() >= INT4_MIN_WEIGHTS
            state.update(_quantised(key, tensor, bits=4 if four_bit else 8))
            continue
        if tensor.is_floating_point():
            tensor = tensor.to(FLOAT_DTYPES[weights_dtype])
            if not torch.isfinite(tensor).all() and torch.isfinite(value).all():
                raise SlidemapError(f"weight {key} overflows {weights_dtype}: save the model "
                                    "as float32")
        state[key] = tensor.contiguous().clone()
    return state


def as_stored(model: nn.Module, weights_dtype: str) -> nn.Module:
    """``model`` with the weights its file will hold once read back: a copy rounded through
    ``weights_dtype``, or ``model`` itself for float32. Validation scores this, so that a
    run's history.csv gives the F1 of the file it writes, not of weights nobody can load."""
    if check_weights_dtype(weights_dtype) == "float32":
        return model
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    rounded = copy.deepcopy(model)
    rounded.load_state_dict(restored_state(stored_state(model, weights_dtype), shapes))
    return rounded


def _quantised(key: str, tensor: torch.Tensor, bits: int) -> dict[str, torch.Tensor]:
    """``tensor`` as whole numbers of ``bits`` (8 or 4) with one float32 scale per output
    channel (dimension 0), symmetric about zero; 1-D tensors (biases, BatchNorm) are few and
    kept float32."""
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise SlidemapError(f"weight {key} is not finite: the model cannot be saved")
    if tensor.dim() < 2:
        return {key: tensor.contiguous().clone()}
    levels = 2 ** (bits - 1) - 1
    peak = tensor.abs().amax(dim=tuple(range(1, tensor.dim())), keepdim=True)
    scale = torch.where(peak > 0, peak / levels, torch.ones_like(peak))
    whole = torch.round(tensor / scale).clamp(-levels, levels).to(torch.int8)
    if bits == 8:
        return {key: whole.contiguous(), key + INT8_SCALE: scale.flatten().contiguous()}
    return {key: _packed(whole), key + INT4_SCALE: scale.flatten().contiguous()}


def _packed(whole: torch.Tensor) -> torch.Tensor:
    """Whole numbers -7..7 as uint8, two per byte along each output channel (low nibble
    first, offset by 8; an odd count is padded with a zero)."""
    rows = (whole.reshape(whole.shape[0], -1) + 8).to(torch.uint8)
    if rows.shape[1] % 2:
        rows = torch.cat([rows, torch.full_like(rows[:, :1], 8)], dim=1)
    return (rows[:, 0::2] | (rows[:, 1::2] << 4)).contiguous()


def _unpacked(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The whole numbers :func:`_packed` stored, as int8 of ``shape``."""
    rows = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)
    count = math.prod(shape[1:])
    return (rows[:, :count].to(torch.int8) - 8).reshape(shape)


def restored_state(state: dict[str, torch.Tensor],
                   shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The stored state with every quantised kernel multiplied back by its scales (float32);
    ``shapes`` (the network's own) says how to unpack 4-bit kernels."""
    restored = {}
    for key, tensor in state.items():
        if key.endswith((INT8_SCALE, INT4_SCALE)):
            if key[:key.rindex(".")] not in state:
                raise SlidemapError(f"scales {key} belong to no weight: re-export the model "
                                    "with slidemap")
            continue
        restored[key] = _dequantised(key, tensor, state, shapes.get(key))
    return restored


def _dequantised(key: str, tensor: torch.Tensor, state: dict[str, torch.Tensor],
                 shape: tuple[int, ...] | None) -> torch.Tensor:
    """``tensor`` as float32 if it is stored quantised, checked against its scales; other
    tensors as they are."""
    four, eight = state.get(key + INT4_SCALE), state.get(key + INT8_SCALE)
    if four is None and eight is None and tensor.dtype not in (torch.int8, torch.uint8):
        return tensor
    if eight is not None and four is None and tensor.dtype == torch.int8:
        whole, scale = tensor, eight
    elif four is not None and eight is None and tensor.dtype == torch.uint8 and shape \
            and tuple(tensor.shape) == (shape[0], (math.prod(shape[1:]) + 1) // 2):
        whole, scale = _unpacked(tensor, shape), four
    else:
        whole, scale = tensor, None
    if scale is None or scale.numel() != whole.shape[0]:
        raise SlidemapError(f"quantised weight {key} does not match its scales: re-export "
                            "the model with slidemap")
    return whole.float() * scale.float().reshape((-1,) + (1,) * (whole.dim() - 1))


def load_model(path: str | Path) -> ModelBundle:
    """Build the model described by the sidecar and load its weights without unpickling.

    Nothing is built or read beyond the sidecar and the weights' header until both are checked
    (see the module's docstring). ``path`` may be a shipped model's bare name
    (:func:`model_source`).
    """
    path = model_source(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise SlidemapError(
            f"{path} is a pickle-based checkpoint, which can run code when loaded: slidemap only "
            "loads NAME.safetensors + NAME.json model files"
        )
    if path.suffix.lower() == ONNX_SUFFIX:  # else "NAME.onnx.safetensors does not exist"
        raise SlidemapError(f"{path} is an ONNX export: pass the model file it was exported from "
                            "(NAME.safetensors with its NAME.json); predict --backend onnx runs "
                            "the NAME.onnx beside it")
    if path.suffix.lower() in RUN_CONFIG_SUFFIXES:  # else "NAME.yaml.safetensors does not exist"
        raise SlidemapError(f"{path} is a run config, not a model: pass the model file a run "
                            "wrote (RUN/model.safetensors), or train one with slidemap train")
    if path.is_dir():
        raise SlidemapError(f"{path} is a folder: pass a model file in it (NAME.safetensors with "
                            "its NAME.json), e.g. a run's model.safetensors")
    weights_path, sidecar_path = model_paths(path)
    for p in (weights_path, sidecar_path):
        if not p.is_file():
            raise SlidemapError(f"model file {p} does not exist: pass NAME.safetensors with "
                                f"its NAME.json beside it{_or_shipped(path)}")
    config = _read_sidecar(sidecar_path)
    inputs = InputSpec.from_dict(config["inputs"])
    channels = len(inputs.channels)
    try:
        stored = current_keys(config["architecture"], header_shapes(*read_header(weights_path)))
    except (ValueError, OSError) as exc:
        raise SlidemapError(f"model weights {weights_path} are not a valid safetensors file "
                            f"({first_line(exc)}): re-download or re-train the model") from exc

    def network(device: str) -> nn.Module:
        with torch.device(device):
            return build_network(config["architecture"], channels, config["width"],
                                 config["members"], **config["options"])

    tensors = sum(not key.endswith((INT8_SCALE, INT4_SCALE)) for key in stored)
    try:
        with _parameter_budget(tensors, weights_path):
            meta = network("meta").state_dict()
    except _OverBudget:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AssertionError, ArithmeticError,
            RuntimeError, SlidemapError) as exc:  # options no builder accepts
        raise SlidemapError(f"model sidecar {sidecar_path} is malformed ({first_line(exc)}): "
                            "re-export the model with slidemap") from exc
    shapes = {k: tuple(v.shape) for k, v in meta.items()}
    _check_state(shapes, _restored_shapes(stored, shapes), weights_path)
    data = weights_path.read_bytes()  # as large as the tensors the network needs: no more
    digest = config.get("weights_sha256")
    if digest is not None and hashlib.sha256(data).hexdigest() != digest:
        raise SlidemapError(f"model weights {weights_path} are not the ones its sidecar "
                            f"{sidecar_path.name} was saved with: the two files must come from "
                            "the same save (re-train, or restore both)")
    try:
        state = load(data)
    except SafetensorError as exc:
        raise SlidemapError(f"model weights {weights_path} are not a valid safetensors file "
                            f"({exc}): re-download or re-train the model") from exc
    del data
    state = restored_state(current_keys(config["architecture"], state), shapes)
    _check_state(shapes, state, weights_path)
    for key, tensor in state.items():
        if meta[key].is_floating_point() != tensor.is_floating_point() \
                or (tensor.is_floating_point() and tensor.dtype not in STORED_FLOATS):
            raise SlidemapError(f"model weights {weights_path} store {key} as "
                                f"{str(tensor.dtype).removeprefix('torch.')}, which slidemap "
                                "never writes for it: re-download or re-train the model")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise SlidemapError(f"model weights {weights_path} hold values that are not finite "
                                f"(NaN or infinity, in {key}): the training diverged; re-train "
                                "with a lower training.lr")
    model = network("cpu")
    model.load_state_dict(state)
    model.eval()
    norm = config["normalisation"]
    return ModelBundle(
        model=model, architecture=config["architecture"], width=config["width"],
        options=config["options"], inputs=inputs, mean=list(norm["mean"]),
        std=list(norm["std"]), threshold=config["threshold"],
        provenance=config["provenance"], path=weights_path,
        weights_dtype=config["weights_dtype"], predict=PredictDefaults(**config["predict"]),
        members=config["members"],
    )


def _or_shipped(path: Path) -> str:
    """For a bare name, the shipped models' names that could have been meant."""
    if not is_bare_name(path):
        return ""
    return f", or a shipped model's name ({', '.join(shipped_names()) or 'none shipped'})"


def sidecar_record(path: str | Path) -> dict:
    """A model file's sidecar as JSON, unchecked, or ``{}`` where it is missing, unreadable or
    too large: what reports and checks that only read a field (its card, its provenance) take.
    ``path`` may be a shipped model's bare name (:func:`model_source`)."""
    sidecar = model_paths(model_source(path))[1]
    try:
        if sidecar.stat().st_size > SIDECAR_MAX_BYTES:
            return {}
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def model_card(path: str | Path) -> dict:
    """The card of a model file's sidecar (``{}`` if it has none)."""
    card = sidecar_record(path).get("card")
    return card if isinstance(card, dict) else {}


def _read_sidecar(path: Path) -> dict:
    """The sidecar's fields, each checked (:func:`slidemap.io.sidecar.check_sidecar`)."""
    try:
        size = path.stat().st_size
        if size > SIDECAR_MAX_BYTES:
            raise ValueError(f"{size:,} bytes, more than the {SIDECAR_MAX_BYTES:,} a sidecar "
                             "may have")
        config = json.loads(path.read_bytes().decode("utf-8"))
        config = check_sidecar(config)
        PredictDefaults(**config["predict"])
        return config
    except NewerFormat as exc:
        raise SlidemapError(f"model sidecar {path} {exc}") from exc
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError, OSError,
            SlidemapError) as exc:
        raise SlidemapError(f"model sidecar {path} is malformed ({first_line(exc)}): "
                            "re-export the model with slidemap") from exc


class _OverBudget(SlidemapError):
    """A sidecar's network outgrew its weights file while being built on the meta device."""


@contextlib.contextmanager
def _parameter_budget(tensors: int, path: Path) -> Iterator[None]:
    """Stop a network being built in this thread once it registers more parameters than twice
    the ``tensors`` of its weights file: such a network cannot be theirs (every parameter is a
    tensor of the file; twice, because a builder may replace a few it made), and the meta
    device spares only the tensors' memory, not the modules' (a sidecar asking for SegFormer
    stages of thousands of blocks built for minutes into gigabytes before its shapes were
    compared with a small file's)."""
    thread, count, limit = threading.get_ident(), 0, 2 * tensors

    def hook(module: nn.Module, name: str, parameter: nn.Parameter | None) -> None:
        nonlocal count
        if parameter is None or threading.get_ident() != thread:
            return
        count += 1
        if count > limit:
            raise _OverBudget(f"model weights {path} do not match their sidecar (its network "
                              f"has more than {limit} parameter tensors, the weights file "
                              f"{tensors}): the two files must come from the same training run")

    handle = register_module_parameter_registration_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _restored_shapes(stored: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
                     ) -> dict[str, tuple[int, ...]]:
    """The shapes the header's tensors will have once dequantised (a packed int4 kernel of the
    expected packing counts as the expected shape); quantisation scales are left out."""
    shapes = {}
    for key, shape in stored.items():
        if key.endswith((INT8_SCALE, INT4_SCALE)):
            continue
        want = expected.get(key)
        if key + INT4_SCALE in stored and want and len(shape) == 2 \
                and shape == (want[0], (math.prod(want[1:]) + 1) // 2):
            shape = want
        shapes[key] = shape
    return shapes


def _check_state(expected: dict[str, tuple[int, ...]],
                 state: dict[str, torch.Tensor] | dict[str, tuple[int, ...]], path: Path) -> None:
    found = {k: tuple(v if isinstance(v, tuple) else v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or extra or wrong:
        if missing:
            detail = f"missing {missing[:2]}"
        elif extra:
            detail = f"unexpected {extra[:2]}"
        else:
            key = wrong[0]
            detail = f"shape of {key} is {found[key]}, the sidecar says {expected[key]}"
        raise SlidemapError(f"model weights {path} do not match their sidecar ({detail}): "
                            "the two files must come from the same training run")
