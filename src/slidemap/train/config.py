"""A training run described by a YAML file, parsed into typed settings with one-line errors."""

from __future__ import annotations

import contextlib
import math
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from slidemap.data.channels import InputSpec
from slidemap.data.l4s import DEFAULT_BANDS
from slidemap.data.sources import PatchSource, is_patch_source, l4s_inputs, parse_patch_source
from slidemap.data.vectors import is_vector
from slidemap.errors import SlidemapError
from slidemap.io.modelfile import PredictDefaults, model_paths
from slidemap.io.sidecar import check_threshold


@dataclass(frozen=True)
class SceneSource:
    """One scene: image, optional DEM, labels (optional for targets): a label raster (0/1, 255
    ignore) or landslide polygons, and optionally the polygons of the area labelled (aoi)."""

    image: Path
    mask: Path | None
    dem: Path | None = None
    aoi: Path | None = None


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
    # true (±20 % each) or {brightness, contrast, saturation} strengths; stored as that mapping.
    colour_jitter: bool | dict = False
    random_scale: tuple[float, float] | None = None
    # Zoom out by reading a wider window of the scene (real context) instead of padding the
    # tile with ignored border; zoom in reads a narrower one.
    zoom_context: bool = False
    hard_examples: float = 0.0
    # Which epoch becomes model.safetensors: "best" by validation F1, or "last" (no selection on
    # the validation scenes, so their figures stay an honest estimate on unseen ground).
    select: str = "best"
    freeze_encoder: bool = False  # with init: train all but model.encoder
    # The encoder's peak learning rate as a fraction of lr: below 1 a pretrained encoder moves
    # less than the decoder while a few new tiles fine-tune it (train/finetune.py).
    encoder_lr: float = 1.0
    # How model.safetensors stores its weights: float16 halves the file (see io/modelfile.py).
    weights_dtype: str = "float32"
    # From this epoch on, the weights of every step are averaged into model.safetensors (SWA).
    average_from: int | None = None
    # Networks trained with seeds seed, seed + 1, ... (in parallel processes) and shipped as one
    # model file that averages their probabilities (train/members.py).
    members: int = 1

    def __post_init__(self) -> None:
        """Check the settings at load time, so that a run fails before its data loads and a
        study before its first run."""
        _check_range("training.lr", self.lr, 1e-12, 10.0, "a learning rate > 0, e.g. 2e-3")
        _check_range("training.weight_decay", self.weight_decay, 0.0, 10.0,
                     "a number >= 0, e.g. 1e-4")
        _check_range("training.min_valid", self.min_valid, 0.0, 1.0, "a fraction in [0, 1]")
        _check_whole("training.seed", self.seed, 0, MAX_SEED)
        _check_whole("training.tile", self.tile, MIN_TRAIN_TILE, MAX_TRAIN_TILE)
        _check_whole("training.epochs", self.epochs, 1, 100_000)
        _check_whole("training.batch_size", self.batch_size, 1, 4096)
        _check_whole("training.windows_per_epoch", self.windows_per_epoch, 1, 10_000_000)
        if self.threads is not None:
            _check_whole("training.threads", self.threads, 1, 1024)
        _check_range("training.mixup", self.mixup, 0.0, float("inf"), "a number >= 0 (0 = off)")
        _check_range("training.hard_examples", self.hard_examples, 0.0, 1.0,
                     "a fraction in [0, 1] (0 = off)")
        _check_range("training.encoder_lr", self.encoder_lr, 0.0, 1.0,
                     "a fraction in [0, 1] of training.lr (1 = the same)")
        if self.members < 1:  # its type is checked where the config is read
            raise SlidemapError(f"training.members must be a whole number of networks (1: no "
                                f"ensemble), got {self.members!r}")
        if self.select not in ("best", "last"):
            raise SlidemapError(f"training.select must be best or last, got {self.select!r}")
        from slidemap.io.modelfile import check_weights_dtype

        try:
            check_weights_dtype(self.weights_dtype)
        except SlidemapError as exc:
            raise SlidemapError(f"training.{exc}") from exc
        if self.average_from is not None:
            value = self.average_from
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not 1 <= value <= self.epochs:
                raise SlidemapError(f"training.average_from must be an epoch from 1 to "
                                    f"{self.epochs}, got {value!r}")
            if self.select != "last":
                raise SlidemapError("training.average_from averages the weights up to the last "
                                    "epoch: set training.select: last")
        object.__setattr__(self, "colour_jitter", _jitter_strengths(self.colour_jitter))
        if self.random_scale is not None:
            scale = self.random_scale
            if not (isinstance(scale, list | tuple) and len(scale) == 2
                    and all(_is_number(v) for v in scale) and 0 < scale[0] <= scale[1]):
                raise SlidemapError("training.random_scale must be [low, high] with "
                                    f"0 < low <= high, e.g. [0.8, 1.25], got {scale!r}")
            object.__setattr__(self, "random_scale", (float(scale[0]), float(scale[1])))
        elif self.zoom_context:
            raise SlidemapError("training.zoom_context needs training.random_scale: "
                                "[low, high], the range of zoom factors")


JITTER_KEYS = ("brightness", "contrast", "saturation", "invert")
JITTER_DEFAULT = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "invert": 0.0}
CHECKED_BY_SETTINGS = {"colour_jitter", "scales", "blocks", "seeds"}  # checked in __post_init__


def _jitter_strengths(value: Any) -> dict[str, float] | bool:
    """``training.colour_jitter`` as {brightness, contrast, saturation} strengths and the
    probability of a brightness inversion, or False."""
    if value is False:
        return False
    if value is True:
        return dict(JITTER_DEFAULT)
    expected = ("true, false or a mapping of brightness, contrast and saturation strengths and "
                "an invert probability, each in [0, 1], e.g. {brightness: 0.4, contrast: 0.4, "
                "saturation: 0.2, invert: 0.5}")
    if not isinstance(value, dict) or not set(value) <= set(JITTER_KEYS):
        raise SlidemapError(f"training.colour_jitter must be {expected}, got {value!r}")
    for key, strength in value.items():
        _check_range(f"training.colour_jitter.{key}", strength, 0.0, 1.0, "a number in [0, 1]")
    return {key: float(value.get(key, 0.0)) for key in JITTER_KEYS}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_range(key: str, value: Any, low: float, high: float, expected: str) -> None:
    if not _is_number(value) or not low <= value <= high:  # NaN fails both comparisons
        raise SlidemapError(f"{key} must be {expected}, got {value!r}")


MAX_SEED = 2**31 - 1
MIN_TRAIN_TILE, MAX_TRAIN_TILE = 16, 4096  # a window the encoder can halve a few times


def _check_whole(key: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SlidemapError(f"{key} must be a whole number from {low} to {high:,}, "
                            f"got {value!r}")


@dataclass(frozen=True)
class PredictSettings:
    """The defaults the model file carries (``slidemap.io.modelfile.PredictDefaults`` and the
    decision threshold); validation during training predicts as that file will be run."""

    tile: int = 256
    overlap: int = 64
    batch_size: int = 8
    scales: tuple[float, ...] = (1.0,)
    threshold: float = 0.5

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", self.defaults.scales)
        try:
            object.__setattr__(self, "threshold", check_threshold(self.threshold))
        except SlidemapError as exc:
            raise SlidemapError(f"predict.{exc}") from exc

    @property
    def defaults(self) -> PredictDefaults:
        """What the model file carries; built on parsing too, so a bad value fails before
        training rather than when the model is saved."""
        return PredictDefaults(self.tile, self.overlap, self.scales)


@dataclass(frozen=True)
class SelfTrainSettings:
    """Pseudo-label rounds on unlabelled target data (``selftrain:``, see configs/README.md)."""

    target_scenes: tuple[SceneSource, ...]
    target_patches: tuple[PatchSource, ...]
    rounds: int = 3
    threshold: float = 0.7
    loss: dict = field(default_factory=lambda: {"soft_ce": 1.0})
    epochs: int | None = None  # per pseudo-label round; None = training.epochs

    def to_dict(self) -> dict:
        return {"target": _sources_dict(self.target_scenes, self.target_patches),
                "rounds": self.rounds, "threshold": self.threshold, "loss": self.loss,
                "epochs": self.epochs}


@dataclass(frozen=True)
class CrossvalSettings:
    """Spatial cross-validation (``crossval:``, see configs/README.md and
    ``slidemap.evaluation.folds``): ``blocks`` rows × columns per scene, dealt to ``folds``
    folds, each trained away from its blocks by ``buffer`` working pixels (None: one training
    window, the least allowed), with every seed of ``seeds``."""

    blocks: tuple[int, int] = (2, 2)
    folds: int = 4
    buffer: int | None = None
    seeds: tuple[int, ...] = (0, 1)

    def __post_init__(self) -> None:
        blocks, seeds = self.blocks, self.seeds
        if not (isinstance(blocks, list | tuple) and len(blocks) == 2
                and all(_is_int(v) and v >= 1 for v in blocks)):
            raise SlidemapError(f"crossval.blocks must be [rows, columns] of blocks per scene, "
                                f"e.g. [2, 2], got {blocks!r}")
        if not (_is_int(self.folds) and self.folds >= 2):
            raise SlidemapError(f"crossval.folds must be an integer >= 2, got {self.folds!r}")
        if self.buffer is not None and not (_is_int(self.buffer) and self.buffer >= 0):
            raise SlidemapError(f"crossval.buffer must be working pixels >= 0 or null (one "
                                f"training window), got {self.buffer!r}")
        if not (isinstance(seeds, list | tuple) and seeds and all(_is_int(v) for v in seeds)
                and len(set(seeds)) == len(seeds)):
            raise SlidemapError(f"crossval.seeds must be a list of distinct integers, e.g. "
                                f"[0, 1], got {seeds!r}")
        object.__setattr__(self, "blocks", (int(blocks[0]), int(blocks[1])))
        object.__setattr__(self, "seeds", tuple(int(v) for v in seeds))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    train_patches: tuple[PatchSource, ...] = ()
    val_patches: tuple[PatchSource, ...] = ()
    init: Path | None = None  # model file whose weights training starts from
    selftrain: SelfTrainSettings | None = None
    crossval: CrossvalSettings = field(default_factory=CrossvalSettings)

    def input_files(self) -> list[Path]:
        """Every file the run reads by name (the config, its scenes' rasters, the model it
        starts from): no output of the run may replace one."""
        scenes = (*self.train_scenes, *self.val_scenes,
                  *(self.selftrain.target_scenes if self.selftrain else ()))
        files = [self.source, *(p for s in scenes for p in (s.image, s.mask, s.dem, s.aoi))]
        if self.init is not None:
            files += model_paths(self.init)
        return [p for p in files if p is not None]

    def to_dict(self) -> dict:
        """Plain-data view for provenance records."""
        out = {
            "name": self.name, "train": _sources_dict(self.train_scenes, self.train_patches),
            "val": _sources_dict(self.val_scenes, self.val_patches),
            "inputs": self.inputs.to_dict(), "model": vars(self.model), "loss": self.loss,
            "training": vars(self.train), "predict": vars(self.predict),
        }
        if self.init is not None:
            out["init"] = str(self.init)
        if self.selftrain is not None:
            out["selftrain"] = self.selftrain.to_dict()
        if self.crossval != CrossvalSettings():
            out["crossval"] = vars(self.crossval)
        return out


def _sources_dict(scenes: tuple[SceneSource, ...], patches: tuple[PatchSource, ...]
                  ) -> list[dict]:
    return [{k: (str(v) if v is not None else None) for k, v in vars(s).items()}
            for s in scenes] + [p.to_dict() for p in patches]


def with_seed(config: RunConfig, seed: int | None) -> RunConfig:
    """``config`` with another ``training.seed`` (the same recipe, another draw); as it is for
    None."""
    return config if seed is None else replace(config, train=replace(config.train, seed=seed))


def load_config(path: str | Path) -> RunConfig:
    """Parse a run config; relative data paths are taken from the current directory."""
    path = Path(path)
    return parse_config(read_yaml(path), path)


YAML_MAX_BYTES = 2**20  # a run config is a page of YAML; a study a few
YAML_MAX_ALIASES = 100  # each alias may repeat a whole subtree: more are a bomb, not a config
YAML_MAX_DEPTH = 50
YAML_MAX_NODES = 100_000  # values once every alias is expanded: a study grid has hundreds


class _BoundedLoader(yaml.SafeLoader):
    """A safe loader that refuses what makes a small file expand into gigabytes or recurse
    without end: more than ``YAML_MAX_ALIASES`` aliases, nesting deeper than
    ``YAML_MAX_DEPTH``, more than ``YAML_MAX_NODES`` values once aliases are expanded (nine
    aliases of nine aliases of ... are few, and expand into billions) or an alias inside its
    own anchor. Aliases share their node until construction, so the check costs no memory."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > YAML_MAX_NODES:
            raise yaml.YAMLError(f"more than {YAML_MAX_NODES:,} values once its aliases "
                                 "(*name) are expanded")
        return node

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > YAML_MAX_ALIASES:
                raise yaml.YAMLError(f"more than {YAML_MAX_ALIASES} aliases (*name)")
        self.depth += 1
        try:
            if self.depth > YAML_MAX_DEPTH:
                raise yaml.YAMLError(f"nesting deeper than {YAML_MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _expanded_size(node: yaml.Node, sizes: dict[int, float]) -> float:
    """How many values ``node`` holds once every alias is expanded (infinite for an alias inside
    its own anchor); ``sizes`` memoises shared nodes."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    sizes[key] = math.inf  # until done: a node met again inside itself is a cycle
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes)
                       for k, v in node.value)
    else:
        size = 1
    sizes[key] = size
    return size


def read_yaml(path: Path, what: str = "config") -> dict:
    """A YAML mapping from ``path``, with one-line errors for a missing file, bad syntax, text
    that is not UTF-8, and files that are too large, too deep or full of aliases."""
    if not path.exists():
        raise SlidemapError(f"{what} {path} does not exist: check the path")
    if path.is_dir():
        raise SlidemapError(f"{what} {path} is a folder: pass a YAML file")
    try:
        size = path.stat().st_size
        if size > YAML_MAX_BYTES:
            raise SlidemapError(f"{what} {path} is {size:,} bytes, more than the "
                                f"{YAML_MAX_BYTES:,} a config may have: pass the YAML file")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SlidemapError(f"{what} {path} is not UTF-8 text (byte {exc.start}): save it as "
                            "UTF-8") from exc
    except OSError as exc:
        raise SlidemapError(f"{what} {path} cannot be read ({exc.strerror}): check the "
                            "path") from exc
    loader = None
    try:
        loader = _BoundedLoader(text)
        raw = loader.get_single_data()
    except yaml.YAMLError as exc:
        if type(exc) is yaml.YAMLError:  # a limit of _BoundedLoader
            raise SlidemapError(f"{what} {path} is refused: {exc}; write it out plainly") \
                from exc
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise SlidemapError(f"{what} {path} is not valid YAML{where}: fix its syntax") from exc
    except (RecursionError, ValueError, TypeError, OverflowError) as exc:
        raise SlidemapError(f"{what} {path} is not valid YAML ({type(exc).__name__}): fix its "
                            "syntax") from exc
    finally:
        if loader is not None:
            loader.dispose()
    if not isinstance(raw, dict):
        raise SlidemapError(f"{what} {path} must be a YAML mapping (key: value lines)")
    return raw


SECTIONS = ("name", "data", "inputs", "model", "loss", "training", "predict", "init",
            "selftrain", "crossval")
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
    train_patches = _patches(data.get("train"), f"{where} data.train")
    val_patches = _patches(data.get("val", []), f"{where} data.val")
    raw_inputs = _section(raw, "inputs", where, required=False)
    selftrain = _selftrain(raw.get("selftrain"), where)
    patch_sets = (*train_patches, *val_patches,
                  *(selftrain.target_patches if selftrain else ()))
    inputs = _l4s_inputs(_inputs(raw_inputs, where), raw_inputs, patch_sets, where)
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
        train_patches=train_patches,
        val_patches=val_patches,
        init=_init(raw.get("init"), where),
        selftrain=selftrain,
        crossval=_settings(CrossvalSettings, _section(raw, "crossval", where, required=False),
                           where),
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


def _scenes(items: Any, where: str, allow_empty: bool = False,
            labelled: bool = True) -> tuple[SceneSource, ...]:
    if not items:
        if allow_empty:
            return ()
        raise SlidemapError(f"{where} is empty: list at least one scene with image and mask "
                            "or a patch set (patches: or l4s:)")
    if not isinstance(items, list):
        raise SlidemapError(f"{where} must be a list of scenes (- image: ..., mask: ...) "
                            "or patch sets (- patches: ...)")
    scenes = []
    for item in items:
        if is_patch_source(item):
            continue
        if not isinstance(item, dict) or "image" not in item or ("mask" not in item and labelled):
            needs = "'image' and 'mask' paths" if labelled else "an 'image' path"
            raise SlidemapError(f"{where}: every scene needs {needs} (or name a patch set with "
                                "patches: or l4s:)")
        extra = sorted(set(item) - {"image", "mask", "dem", "aoi"}, key=str)
        if extra:
            raise SlidemapError(f"{where}: unknown scene key(s) {extra}: a scene has image, "
                                "mask (raster or polygons) and optionally dem and aoi")
        dem, mask, aoi = item.get("dem"), item.get("mask"), item.get("aoi")
        if aoi and not is_vector(aoi):
            raise SlidemapError(f"{where}: aoi {aoi} must be a vector file of polygons "
                                "(.gpkg, .geojson, .shp)")
        scenes.append(SceneSource(Path(item["image"]), Path(mask) if mask else None,
                                  Path(dem) if dem else None, Path(aoi) if aoi else None))
    return tuple(scenes)


def _patches(items: Any, where: str) -> tuple[PatchSource, ...]:
    """The patch sets among ``items`` (already checked to be a list by :func:`_scenes`)."""
    return tuple(parse_patch_source(item, f"{where}[{index}]")
                 for index, item in enumerate(items or []) if is_patch_source(item))


def _l4s_inputs(inputs: InputSpec, raw: dict, patch_sets: tuple[PatchSource, ...],
                where: str) -> InputSpec:
    """Channels named by Landslide4Sense ``bands:`` become the inputs unless ``inputs`` gives them.

    Every set's bands must then build the same channels, since one model reads them all.
    """
    l4s = [p for p in patch_sets if p.kind == "l4s"]
    if not l4s or {"image_bands", "dem", "slope"} & set(raw):
        named = inputs
    else:
        named = replace(inputs, **l4s_inputs(l4s[0].bands or DEFAULT_BANDS))
    for source in l4s:
        if source.bands is not None and replace(named, **l4s_inputs(source.bands)) != named:
            raise SlidemapError(f"{where}: l4s {source.root} bands {list(source.bands)} build "
                                f"other channels than the inputs {named.channels}: give every "
                                "set the same bands, or drop bands to use inputs")
    return named


def _init(value: Any, where: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SlidemapError(f"{where}: init must be the path of a model file, got {value!r}")
    return Path(value)


SELFTRAIN_KEYS = ("target", "rounds", "threshold", "loss", "epochs")


def _selftrain(raw: Any, where: str) -> SelfTrainSettings | None:
    if raw is None:
        return None
    where = f"{where} selftrain"
    if not isinstance(raw, dict) or "target" not in raw:
        raise SlidemapError(f"{where} must be a mapping with target: [unlabelled scenes or "
                            "patch sets], e.g. {target: [{patches: new_site}], rounds: 3}")
    unknown = sorted(set(raw) - set(SELFTRAIN_KEYS), key=str)
    if unknown:
        raise SlidemapError(f"{where}: unknown key(s) {unknown}: valid ones are "
                            f"{list(SELFTRAIN_KEYS)}")
    target = raw["target"]
    scenes = _scenes(target, f"{where}.target", labelled=False)
    settings = SelfTrainSettings(scenes, _patches(target, f"{where}.target"),
                                 **{k: raw[k] for k in SELFTRAIN_KEYS[1:] if k in raw})
    if not (isinstance(settings.rounds, int) and not isinstance(settings.rounds, bool)
            and settings.rounds >= 1):
        raise SlidemapError(f"{where}: rounds must be an integer >= 1, got {settings.rounds!r}")
    _check_range(f"{where}: threshold", settings.threshold, 0.5, 1.0,
                 "a probability in [0.5, 1]")
    epochs = settings.epochs
    if epochs is not None and not (isinstance(epochs, int) and not isinstance(epochs, bool)
                                   and epochs >= 1):
        raise SlidemapError(f"{where}: epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(settings.loss, dict) or not settings.loss:
        raise SlidemapError(f"{where}: loss must map loss names to weights, e.g. {{soft_ce: 1}}")
    _check_loss(settings.loss, where)
    return settings


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
    if default is None or name in CHECKED_BY_SETTINGS:
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
        scale = raw.get("scale", 1.0)
        if not bands_ok or (resolution is not None and not (_is_number(resolution)
                                                            and resolution > 0)) \
                or not (_is_number(scale) and scale > 0):
            raise ValueError
    except SlidemapError as exc:
        raise SlidemapError(f"{where}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise SlidemapError(f"{where}: inputs must give image_bands as a list of band numbers "
                            "from 1, dem/slope as true or false, resolution_m as metres > 0 "
                            f"or null and scale as a factor > 0, got {raw!r}") from exc
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
