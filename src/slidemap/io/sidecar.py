"""Checks of what a model file says about itself, before anything is built from it.

A sidecar and a weights file may come from anywhere: every field is typed, range-checked and
capped here, so that one wrong value gives a one-line error instead of a traceback, a network of
gigabytes or a silently wrong map; the weights' header is read without its tensors.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

from slidemap.data.channels import InputSpec
from slidemap.errors import SlidemapError
from slidemap.models import list_models
from slidemap.schema.values import (
    MAX_PATCH_SCALE,
    MAX_WIDTH,
    OPTICAL_MODES,
    SCALE_RANGE,
    WEIGHTS_DTYPES,
)

FORMAT_VERSION = 1  # of the sidecars this version writes, and the newest it reads
SIDECAR_MAX_BYTES = 16 * 2**20
HEADER_MAX_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header
MAX_MEMBERS = 64  # networks of an ensemble
MAX_BANDS = 256  # image bands a model may read
MAX_OPTION = 4096  # any whole number among the architecture options
INPUT_KEYS = {"image_bands", "dem", "slope", "resolution_m", "scale", "optical", "relief_m",
              "curvature", "roughness_m"}
MAX_RELIEF_RADII = 16
SAFETENSORS_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL",
                      "U16", "U32", "U64", "F8_E4M3", "F8_E5M2"}


class NewerFormat(SlidemapError):
    """A sidecar of a later format than this version reads: not malformed, so the fix is to
    upgrade slidemap, not to re-export the file."""


def _format_version(raw: dict) -> int:
    """The sidecar's format version; a later one than this version knows is refused as such."""
    version = raw.get("format_version", 1)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise NewerFormat(f"is from a newer slidemap (format version {version!r:.20}; this one "
                          f"reads up to {FORMAT_VERSION}): upgrade slidemap (pip install -U "
                          "slidemap) to load it")
    return _whole("format_version", version, 1, FORMAT_VERSION)


def check_threshold(value: object, error: type[SlidemapError] = SlidemapError) -> float:
    """A decision threshold: a probability strictly between 0 and 1. ``error``: what to raise
    (a ``UsageError`` for a value given on the command line, which exits 2 as --scales does)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise error(f"threshold must be a probability between 0 and 1 (exclusive), "
                            f"e.g. 0.5, got {value!r}")
    return float(value)


def check_scales(value: Any) -> tuple[float, ...]:
    """Prediction scales as a tuple: a non-empty list of distinct numbers within SCALE_RANGE."""
    low, high = SCALE_RANGE
    ok = isinstance(value, list | tuple) and 0 < len(value) <= 16 and all(
        isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high
        for v in value) and len(set(value)) == len(value)
    if not ok:
        shown = ", ".join(map(str, value)) if isinstance(value, list | tuple) else repr(value)
        raise SlidemapError(f"prediction scales must be distinct numbers from {low} to {high}, "
                            f"e.g. 1.0, 0.5; got {shown[:80]}")
    return tuple(float(v) for v in value)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{key} must be a whole number from {low} to {high}, not {value!r:.60}")
    return value


def _positive(key: str, value: Any, high: float, or_null: str = "") -> float:
    if not _number(value) or not 0 < value <= high:
        raise ValueError(f"{key} must be a number above 0 and at most {high:g}{or_null}, "
                         f"not {value!r:.60}")
    return float(value)


def _positive_or_null(key: str, value: Any, high: float) -> float | None:
    return None if value is None else _positive(key, value, high, " or null")


def _probability(key: str, value: Any) -> float:
    """A probability in [0, 1]: a model file may carry the ends (0 maps every valid pixel, 1
    none), which a user may pass on purpose; NaN or 2 is a broken file."""
    if not _number(value) or not 0 <= value <= 1:
        raise ValueError(f"{key} must be a probability from 0 to 1, not {value!r:.30}")
    return float(value)


def _inputs(raw: Any) -> dict:
    if not isinstance(raw, dict) or not set(raw) <= INPUT_KEYS:
        raise ValueError(f"inputs must be a mapping of {sorted(INPUT_KEYS)}")
    bands = raw.get("image_bands", [1, 2, 3])
    if not isinstance(bands, list) or not 0 < len(bands) <= MAX_BANDS \
            or len(set(map(repr, bands))) != len(bands):
        raise ValueError(f"inputs.image_bands must be a list of distinct band numbers from 1, "
                         f"not {bands!r:.60}")
    for band in bands:
        _whole("inputs.image_bands", band, 1, 2**16)
    for flag in ("dem", "slope", "curvature"):
        if not isinstance(raw.get(flag, False), bool):
            raise ValueError(f"inputs.{flag} must be true or false, not {raw[flag]!r:.60}")
    optical = raw.get("optical", "raw")
    if optical not in OPTICAL_MODES:
        raise ValueError(f"inputs.optical must be one of {', '.join(OPTICAL_MODES)}")
    return {"image_bands": list(bands), "dem": raw.get("dem", False),
            "slope": raw.get("slope", False),
            "resolution_m": _positive_or_null("inputs.resolution_m", raw.get("resolution_m"), 1e5),
            "scale": _positive("inputs.scale", raw.get("scale", 1.0), MAX_PATCH_SCALE),
            "optical": optical, "relief_m": _relief_radii(raw.get("relief_m")),
            "curvature": raw.get("curvature", False),
            "roughness_m": _positive_or_null("inputs.roughness_m", raw.get("roughness_m"), 1e5)}


def _relief_radii(value: Any) -> float | list[float] | None:
    """``inputs.relief_m``: null, one radius in metres, or a short list of radii."""
    if not isinstance(value, list):
        return _positive_or_null("inputs.relief_m", value, 1e5)
    if not 0 < len(value) <= MAX_RELIEF_RADII:
        raise ValueError(f"inputs.relief_m must list 1 to {MAX_RELIEF_RADII} radii, not "
                         f"{len(value)}")
    return [_positive("inputs.relief_m", radius, 1e5) for radius in value]


def _options(raw: Any) -> dict:
    """Architecture options: names to scalars (or lists of scalars), whole numbers capped."""
    if not isinstance(raw, dict):
        raise ValueError("options must be a mapping of architecture options")
    for key, value in raw.items():
        for item in value if isinstance(value, list) else [value]:
            if item is not None and not isinstance(item, bool | int | float | str):
                raise ValueError(f"options.{key} must be a number, text, true/false or a list "
                                 "of those")
            if isinstance(item, float) and not math.isfinite(item):
                raise ValueError(f"options.{key} must be finite, not {item!r}")
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_OPTION:
                raise ValueError(f"options.{key} must be at most {MAX_OPTION}, not {item!r:.40}")
        if isinstance(value, list) and len(value) > 64:
            raise ValueError(f"options.{key} has more than 64 entries")
    return raw


def check_sidecar(raw: Any) -> dict:
    """The sidecar's fields with defaults filled in (fields it does not know as they are); a
    ``ValueError`` (or ``SlidemapError``) naming the first wrong field otherwise. Sizes are
    capped (``MAX_WIDTH``, ``MAX_MEMBERS``, ``MAX_BANDS``), so no sidecar can ask for a network
    of gigabytes."""
    if not isinstance(raw, dict):
        raise ValueError("it must be a JSON object")
    if raw.get("format", "slidemap-model") != "slidemap-model":
        raise ValueError("format must be slidemap-model")
    _format_version(raw)
    architecture = raw.get("architecture")
    if not isinstance(architecture, str) or architecture not in list_models():
        raise ValueError(f"architecture {architecture!r:.40} is not known")
    inputs = _inputs(raw.get("inputs"))
    spec = InputSpec.from_dict(inputs)
    channels = len(spec.channels)
    if "in_channels" in raw and raw["in_channels"] != channels:
        raise ValueError(f"in_channels says {raw['in_channels']!r:.20} but inputs give "
                         f"{channels} channels")
    if "channels" in raw and raw["channels"] != spec.channels:
        raise ValueError(f"channels say {raw['channels']!r:.60} but inputs give {spec.channels}")
    norm = raw.get("normalisation")
    if not isinstance(norm, dict):
        raise ValueError("normalisation must be a mapping with mean and std")
    for key in ("mean", "std"):
        values = norm.get(key)
        if not isinstance(values, list) or len(values) != channels \
                or not all(_number(v) for v in values):
            raise ValueError(f"normalisation {key} must be {channels} finite numbers, one per "
                             f"input channel, not {values!r:.60}")
    if not all(v > 0 for v in norm["std"]):
        raise ValueError(f"normalisation std must be above 0 for every channel, not "
                         f"{norm['std']!r:.60}")
    weights_dtype = raw.get("weights_dtype", "float32")
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype {weights_dtype!r:.20} is not one of "
                         f"{', '.join(WEIGHTS_DTYPES)}")
    predict = raw.get("predict", {})
    if not isinstance(predict, dict) or not set(predict) <= {"tile", "overlap", "scales"}:
        raise ValueError("predict must be a mapping of tile, overlap and scales")
    provenance = raw.get("provenance", {})
    if not isinstance(provenance, dict):
        raise ValueError("provenance must be a mapping")
    digest = raw.get("weights_sha256")
    if digest is not None and not (isinstance(digest, str)
                                   and re.fullmatch(r"[0-9a-f]{64}", digest)):
        raise ValueError("weights_sha256 must be 64 hexadecimal digits")
    return {
        **raw,  # fields this version does not know pass through unread
        "architecture": architecture,
        "width": _whole("width", raw.get("width"), 1, MAX_WIDTH),
        "members": _whole("members", raw.get("members", 1), 1, MAX_MEMBERS),
        "options": _options(raw.get("options", {})),
        "inputs": inputs,
        "normalisation": {"mean": [float(v) for v in norm["mean"]],
                          "std": [float(v) for v in norm["std"]]},
        "threshold": _probability("threshold", raw.get("threshold", 0.5)),
        "predict": predict,
        "weights_dtype": weights_dtype,
        "provenance": provenance,
        "weights_sha256": digest,
    }


def read_header(path: Path) -> tuple[bytes, int]:
    """The first bytes of a safetensors file, up to the end of its header, and the file's
    size: what :func:`header_shapes` reads, without reading a tensor."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        start = handle.read(8)
        if len(start) < 8:
            return start, size
        (length,) = struct.unpack("<Q", start)
        return start + handle.read(min(length, HEADER_MAX_BYTES, size)), size


def header_shapes(data: bytes, size: int | None = None) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's header (``data``: its first bytes, at least up
    to the header's end; ``size``: the file's, if ``data`` is not the whole file); a
    ``ValueError`` when the header is not one a safetensors writer makes."""
    size = len(data) if size is None else size
    if len(data) < 8:
        raise ValueError("the file is too short for a safetensors header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(HEADER_MAX_BYTES, size - 8, len(data) - 8):
        raise ValueError(f"its header claims {length:,} bytes, more than the file holds")
    try:
        header = json.loads(data[8:8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError("its header is not JSON") from exc
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    shapes: dict[str, tuple[int, ...]] = {}
    body, end = size - 8 - length, 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        ok = isinstance(entry, dict) and entry.get("dtype") in SAFETENSORS_DTYPES \
            and isinstance(entry.get("shape"), list) and len(entry["shape"]) <= 8 \
            and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < 2**40
                    for n in entry["shape"]) \
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2 \
            and all(isinstance(n, int) and 0 <= n <= body for n in entry["data_offsets"])
        if not ok:
            raise ValueError(f"tensor {key!r:.60} has a malformed header entry")
        shapes[key] = tuple(entry["shape"])
        end = max(end, entry["data_offsets"][1])
    if end != body:  # safetensors covers its data exactly: more is not a model's weights
        raise ValueError(f"its tensors take {end:,} bytes but the file holds {body:,}")
    return shapes
