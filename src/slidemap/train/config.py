"""A training run described by a YAML file, parsed into typed settings with one-line errors."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
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
    if not path.exists():
        raise SlidemapError(f"config {path} does not exist: check the path")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SlidemapError(f"config {path} is not valid YAML{where}: fix its syntax") from exc
    if not isinstance(raw, dict):
        raise SlidemapError(f"config {path} must be a YAML mapping (key: value lines)")
    return parse_config(raw, path)


def parse_config(raw: dict[str, Any], path: Path | None = None) -> RunConfig:
    where = f"config {path}" if path else "config"
    data = _section(raw, "data", where)
    train_scenes = _scenes(data.get("train"), f"{where} data.train")
    val_scenes = _scenes(data.get("val", []), f"{where} data.val", allow_empty=True)
    inputs_raw = _section(raw, "inputs", where, required=False)
    inputs = InputSpec.from_dict(inputs_raw)
    loss = raw.get("loss", {"bce": 1.0, "dice": 1.0})
    if not isinstance(loss, dict) or not loss:
        raise SlidemapError(f"{where}: loss must map loss names to weights, "
                            "e.g. {bce: 1, dice: 1}")
    return RunConfig(
        name=str(raw.get("name", path.stem if path else "run")),
        train_scenes=train_scenes,
        val_scenes=val_scenes,
        inputs=inputs,
        model=_settings(ModelSettings, _section(raw, "model", where, required=False), where),
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
        dem = item.get("dem")
        scenes.append(SceneSource(Path(item["image"]), Path(item["mask"]),
                                  Path(dem) if dem else None))
    return tuple(scenes)


def _settings(cls: type, values: dict, where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SlidemapError(f"{where}: unknown setting(s) {unknown} for {cls.__name__}: "
                            f"valid ones are {sorted(known)}")
    return cls(**values)
