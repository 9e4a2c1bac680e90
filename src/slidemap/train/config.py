"""A training run described by a YAML file, parsed into typed settings with one-line errors."""

from __future__ import annotations

import contextlib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from slidemap.data.channels import InputSpec
from slidemap.errors import SlidemapError


@dataclass(frozen=True)
class SceneSource:
    """One labelled scene: image, optional DEM, label raster (0/1, 255 ignore)."""

    image: Path
    mask: Path
    dem: Path | None = None


@dataclass(frozen=True)
class ModelSettings:
    name: str = "unet"
    width: int = 16
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 30
    batch_size: int = 8
    tile: int = 256
    windows_per_epoch: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    min_valid: float = 0.25
    augment: bool = True
    precision: str = "bf16"
    threads: int | None = None
    seed: int = 0
    # Training recipes (see configs/README.md), all off by default.
    mixup: float = 0.0
    colour_jitter: bool = False
    random_scale: tuple[float, float] | None = None
    hard_examples: float = 0.0

    def __post_init__(self) -> None:
        """Check the recipe settings at load time, so that a study fails before its first run."""
        _check_range("training.mixup", self.mixup, 0.0, float("inf"), "a number >= 0 (0 = off)")
        _check_range("training.hard_examples", self.hard_examples, 0.0, 1.0,
                     "a fraction in [0, 1] (0 = off)")
        if not isinstance(self.colour_jitter, bool):
            raise SlidemapError(f"training.colour_jitter must be true or false, "
                                f"got {self.colour_jitter!r}")
        if self.random_scale is not None:
            scale = self.random_scale
            if not (isinstance(scale, list | tuple) and len(scale) == 2
                    and all(_is_number(v) for v in scale) and 0 < scale[0] <= scale[1]):
                raise SlidemapError("training.random_scale must be [low, high] with "
                                    f"0 < low <= high, e.g. [0.8, 1.25], got {scale!r}")
            object.__setattr__(self, "random_scale", (float(scale[0]), float(scale[1])))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_range(key: str, value: Any, low: float, high: float, expected: str) -> None:
    if not _is_number(value) or not low <= value <= high:
        raise SlidemapError(f"{key} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class PredictSettings:
    tile: int = 256
    overlap: int = 64
    batch_size: int = 8


@dataclass(frozen=True)
class RunConfig:
    name: str
    train_scenes: tuple[SceneSource, ...]
    val_scenes: tuple[SceneSource, ...]
    inputs: InputSpec
    model: ModelSettings
    loss: dict
    train: TrainSettings
    predict: PredictSettings
    source: Path | None = None

    def to_dict(self) -> dict:
        """Plain-data view for provenance records."""
        def scenes(items: tuple[SceneSource, ...]) -> list[dict]:
            return [{k: (str(v) if v is not None else None) for k, v in vars(s).items()}
                    for s in items]
        return {
            "name": self.name, "train": scenes(self.train_scenes), "val": scenes(self.val_scenes),
            "inputs": self.inputs.to_dict(), "model": vars(self.model), "loss": self.loss,
            "training": vars(self.train), "predict": vars(self.predict),
        }


def load_config(path: str | Path) -> RunConfig:
    """Parse a run config; relative data paths are taken from the current directory."""
    path = Path(path)
    return parse_config(read_yaml(path), path)


def read_yaml(path: Path, what: str = "config") -> dict:
    """A YAML mapping from ``path``, with one-line errors for a missing file or bad syntax."""
    if not path.exists():
        raise SlidemapError(f"{what} {path} does not exist: check the path")
    if path.is_dir():
        raise SlidemapError(f"{what} {path} is a folder: pass a YAML file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SlidemapError(f"{what} {path} is not valid YAML{where}: fix its syntax") from exc
    if not isinstance(raw, dict):
        raise SlidemapError(f"{what} {path} must be a YAML mapping (key: value lines)")
    return raw


SECTIONS = ("name", "data", "inputs", "model", "loss", "training", "predict")
POSITIVE = {"width", "epochs", "batch_size", "tile", "windows_per_epoch"}


def parse_config(raw: dict[str, Any], path: Path | None = None) -> RunConfig:
    where = f"config {path}" if path else "config"
    unknown = sorted(set(raw) - set(SECTIONS), key=str)
    if unknown:
        raise SlidemapError(f"{where} has unknown section(s) {unknown}: valid ones are "
                            f"{list(SECTIONS)}")
    data = _section(raw, "data", where)
    train_scenes = _scenes(data.get("train"), f"{where} data.train")
    val_scenes = _scenes(data.get("val", []), f"{where} data.val", allow_empty=True)
    inputs = _inputs(_section(raw, "inputs", where, required=False), where)
    loss = raw.get("loss", {"bce": 1.0, "dice": 1.0})
    if not isinstance(loss, dict) or not loss:
        raise SlidemapError(f"{where}: loss must map loss names to weights, "
                            "e.g. {bce: 1, dice: 1}")
    _check_loss(loss, where)
    model = _settings(ModelSettings, _section(raw, "model", where, required=False), where)
    _check_model(model, where)
    return RunConfig(
        name=str(raw.get("name", path.stem if path else "run")),
        train_scenes=train_scenes,
        val_scenes=val_scenes,
        inputs=inputs,
        model=model,
        loss=loss,
        train=_settings(TrainSettings, _section(raw, "training", where, required=False), where),
        predict=_settings(PredictSettings, _section(raw, "predict", where, required=False), where),
        source=path,
    )


def _section(raw: dict, key: str, where: str, required: bool = True) -> dict:
    value = raw.get(key)
    if value is None:
        if required:
            raise SlidemapError(f"{where} has no '{key}:' section: add it (see configs/)")
        return {}
    if not isinstance(value, dict):
        raise SlidemapError(f"{where}: '{key}' must be a mapping")
    return value


def _scenes(items: Any, where: str, allow_empty: bool = False) -> tuple[SceneSource, ...]:
    if not items:
        if allow_empty:
            return ()
        raise SlidemapError(f"{where} is empty: list at least one scene with image and mask")
    if not isinstance(items, list):
        raise SlidemapError(f"{where} must be a list of scenes (- image: ..., mask: ...)")
    scenes = []
    for item in items:
        if not isinstance(item, dict) or "image" not in item or "mask" not in item:
            raise SlidemapError(f"{where}: every scene needs 'image' and 'mask' paths")
        extra = sorted(set(item) - {"image", "mask", "dem"}, key=str)
        if extra:
            raise SlidemapError(f"{where}: unknown scene key(s) {extra}: a scene has image, "
                                "mask and optionally dem")
        dem = item.get("dem")
        scenes.append(SceneSource(Path(item["image"]), Path(item["mask"]),
                                  Path(dem) if dem else None))
    return tuple(scenes)


def _settings(cls: type, values: dict, where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known), key=str)
    if unknown:
        raise SlidemapError(f"{where}: unknown setting(s) {unknown} for {cls.__name__}: "
                            f"valid ones are {sorted(known)}")
    values = {name: _check_type(name, value, known[name], where)
              for name, value in values.items()}
    try:
        return cls(**values)
    except SlidemapError as exc:
        raise SlidemapError(f"{where}: {exc}") from exc


def _check_type(name: str, value: Any, spec: Any, where: str) -> Any:
    """A setting must have the type of its default (settings whose default is None aside).

    Returns the value, with YAML 1.1's strings for exponent floats (``2e-3``) made numbers.
    """
    default = spec.default if spec.default is not MISSING else (
        spec.default_factory() if spec.default_factory is not MISSING else None)
    if default is None:
        return value
    kind = type(default)
    if kind is float and isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if kind is bool:
        ok, expected = isinstance(value, bool), "true or false"
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        ok, expected = ok and (value >= 1 or name not in POSITIVE), "an integer" + (
            " >= 1" if name in POSITIVE else "")
    elif kind is float:
        ok, expected = _is_number(value), "a number"
    else:
        ok, expected = isinstance(value, kind), f"a {kind.__name__}"
    if name == "precision":
        ok, expected = value in ("bf16", "fp32"), "bf16 or fp32"
    if not ok:
        raise SlidemapError(f"{where}: setting '{name}' must be {expected}, got {value!r}")
    return value


def _inputs(raw: dict, where: str) -> InputSpec:
    known = {f.name for f in fields(InputSpec)}
    unknown = sorted(set(raw) - known, key=str)
    if unknown:
        raise SlidemapError(f"{where}: unknown inputs key(s) {unknown}: valid ones are "
                            f"{sorted(known)}")
    try:
        inputs = InputSpec.from_dict(raw)
        bands_ok = inputs.image_bands and min(inputs.image_bands) >= 1
        resolution = inputs.resolution_m
        if not bands_ok or (resolution is not None and not (_is_number(resolution)
                                                            and resolution > 0)):
            raise ValueError
    except (TypeError, ValueError) as exc:
        raise SlidemapError(f"{where}: inputs must give image_bands as a list of band numbers "
                            "from 1, dem/slope as true or false and resolution_m as metres > 0 "
                            f"or null, got {raw!r}") from exc
    return inputs


def _check_model(model: ModelSettings, where: str) -> None:
    from slidemap.models import list_models

    if model.name not in list_models():
        raise SlidemapError(f"{where}: model.name {model.name!r} is not known: choose one of "
                            f"{', '.join(list_models())}")


def _check_loss(loss: dict, where: str) -> None:
    from slidemap.train.losses import build_loss

    try:
        build_loss(loss)
    except (SlidemapError, TypeError, ValueError) as exc:
        raise SlidemapError(f"{where}: {exc}") from exc
