"""A training run as a typed document: the schema of ``configs/*.yaml``.

Every section is a frozen pydantic model that refuses unknown keys and checks types and ranges
when the file is read, so a run fails before its data loads and a study before its first run.
The descriptions are the documentation: configs/README.md's key table and the JSON Schema that
editors read (``slidemap config-schema``) are generated from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from slidemap.schema.errors import validated
from slidemap.schema.gdalname import is_local
from slidemap.schema.inputs import InputSpec, Number
from slidemap.schema.values import (
    BAND_NAMES,
    DEFAULT_BANDS,
    LOSS_NAMES,
    MAX_SCALES,
    MAX_SEED,
    MAX_TILE,
    MAX_TRAIN_TILE,
    MAX_WIDTH,
    MIN_TILE,
    MIN_TRAIN_TILE,
    RGB_BANDS,
    SCALE_RANGE,
    ModelName,
    Precision,
    Select,
    SplitPart,
    WeightsDtype,
    band_indexes,
    is_vector,
    l4s_inputs,
)

Fraction = Annotated[Number, Field(ge=0, le=1)]
Positive = Annotated[StrictInt, Field(ge=1)]


def _known_losses(spec: dict[str, Any]) -> dict[str, Any]:
    unknown = [name for name in spec if name not in LOSS_NAMES]
    if unknown:
        raise ValueError(f"unknown loss {unknown[0]!r}: choose from {', '.join(LOSS_NAMES)}")
    return spec


# Loss name -> its weight, or its options with an optional ``weight`` (checked by build_loss).
# Keys are plain text for the training code; the schema tells editors the names.
LossSpec = Annotated[dict[str, Number | dict[str, Any]], AfterValidator(_known_losses), Field(
    min_length=1, json_schema_extra={"propertyNames": {"enum": list(LOSS_NAMES)}})]


def _bce_dice() -> dict[str, float | dict[str, Any]]:
    return {"bce": 1.0, "dice": 1.0}


def _soft_ce() -> dict[str, float | dict[str, Any]]:
    return {"soft_ce": 1.0}


class Section(BaseModel):
    """Frozen and strict about keys: a typo is an error, not a silently ignored setting."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def changed(self, **fields: Any) -> Self:
        """A copy with ``fields`` replaced, checked like a config file's values."""
        return validated(type(self), {**dict(self), **fields}, type(self).__name__)


def _named(value: Any) -> Any:
    """An empty string is no file (``Path("")`` would be the current folder)."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("must be a path, not empty")
    return value


def _local(value: Any) -> Any:
    """A file or folder that slidemap itself opens must be on this machine: a GDAL name
    (``/vsizip/...``, a URL) as a ``Path`` would lose its ``//`` and be looked for on disk."""
    value = _named(value)
    if isinstance(value, str) and not is_local(value):
        raise ValueError("must be a local path: GDAL names (/vsi..., URLs, subdatasets) are "
                         "read for rasters only; copy the file out first")
    return value


def _raster(value: Any) -> Any:
    """A local file as a ``Path``; any other GDAL name (``/vsizip//abs/d.zip/o.tif``, a URL,
    ``HDF5:"f.h5"://sub``) as the text written, which GDAL opens as it is and provenance
    records as it is: a ``Path`` would fold its ``//`` into ``/``."""
    value = _named(value)
    if isinstance(value, str) and is_local(value):
        return Path(value)
    return value


def _labels(value: Any) -> Any:
    """A label raster as :func:`_raster`; polygons are read by slidemap, from a local file."""
    value = _raster(value)
    if isinstance(value, str) and is_vector(value):
        raise ValueError("must be a local file for polygons: GDAL names (/vsi..., URLs) are "
                         "read for label rasters only; copy the vector file out first")
    return value


FilePath = Annotated[Path, BeforeValidator(_local)]
# a local Path, or a GDAL name kept as text (one string to editors)
RasterName = Annotated[Path | str, BeforeValidator(_raster), WithJsonSchema({"type": "string"})]
LabelName = Annotated[Path | str, BeforeValidator(_labels), WithJsonSchema({"type": "string"})]


# -- data ----------------------------------------------------------------------------------------
class SceneSource(Section):
    """One scene: image, optional DEM, labels (optional for targets): a label raster (0/1, 255
    ignore) or landslide polygons, and optionally the polygons of the area labelled (aoi).
    Relative paths are taken from the current directory. A raster may be any GDAL raster name,
    kept as written."""

    image: RasterName = Field(description=(
        "the image raster: a local file or any GDAL raster name (`/vsizip/d.zip/o.tif`, "
        "`/vsicurl/https://…`, `HDF5:\"f.h5\"://img`), recorded as written"))
    mask: LabelName | None = Field(default=None, description=(
            "a label raster (0, 1 landslide, 255 ignore; any grid or CRS; any GDAL raster name), "
            "or a local vector file of landslide polygons (`.gpkg`, `.geojson`, `.shp`, …; any "
            "CRS), rasterised window by window onto the image grid at the centres of its "
            "(working-resolution) pixels; a GeoPackage of several layers as "
            "`FILE.gpkg|layername=NAME` (the QGIS spelling)"))
    dem: RasterName | None = Field(default=None, description=(
        "the DEM raster (any grid or CRS; any GDAL raster name)"))
    aoi: FilePath | None = Field(default=None, description=(
            "polygons of the area that was labelled (a local vector file, any CRS): inside, "
            "pixels in a landslide polygon are 1 and the rest 0; outside, 255 (ignored). "
            "Without `aoi`, every valid image pixel outside the polygons is background, so the "
            "polygons must cover every landslide of the scene. Also restricts a label raster; "
            "`null`: the whole image"))

    @field_validator("aoi")
    @classmethod
    def _aoi_is_vector(cls, value: Path | None) -> Path | None:
        if value is not None and not is_vector(value):
            raise ValueError("must be a vector file of polygons (.gpkg, .geojson, .shp)")
        return value


class LabelledScene(SceneSource):
    """A training or validation scene: its labels are required."""

    mask: LabelName = Field(description=(
        f"{SceneSource.model_fields['mask'].description}; a `selftrain.target` scene may leave "
        "it out"))


class Split(Section):
    """A seeded draw of ``count`` patches: ``part: train`` keeps them, ``part: rest`` the others."""

    count: Positive = Field(description="patches drawn")
    seed: StrictInt = Field(default=0, description="seed of the draw")
    part: SplitPart = Field(default="train", description=(
        "train: keep the drawn patches; rest: all the others, so train and val can split one "
        "folder without overlap"))


@dataclass(frozen=True)
class PatchSource:
    """A patch set in a run config, and which of its patches to use (all by default)."""

    kind: Literal["patches", "l4s"]
    root: Path
    names: tuple[str, ...] | None = None
    split: Split | None = None
    bands: tuple[str, ...] | None = None  # Landslide4Sense band names
    pixel_size: float | None = None  # metres, for slope from DEMs without georeference

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.kind: str(self.root)}
        if self.names is not None:
            out["names"] = list(self.names)
        if self.split is not None:
            out["split"] = self.split.model_dump()
        if self.bands is not None:
            out["bands"] = list(self.bands)
        if self.pixel_size is not None:
            out["pixel_size"] = self.pixel_size
        return out


PatchNames = Annotated[tuple[str | int, ...], Field(min_length=1)]  # YAML reads 10009 as a number


class _PatchItem(Section):
    names: PatchNames | None = Field(default=None, description=(
            "only these patches (file stems, e.g. `[10009, 10013]` or `[image_3]`); `null`: all"))
    split: Split | None = Field(default=None, description=(
            "a seeded draw: `{count: 10, seed: 0, part: train}` keeps `count` patches drawn with"
            " `seed`, `part: rest` keeps all the others, so train and val can split one folder "
            "without overlap. Not with `names`; `null`: all"))

    @model_validator(mode="after")
    def _names_or_split(self) -> _PatchItem:
        if self.names is not None and self.split is not None:
            raise ValueError("give either names or split, not both")
        return self

    def _names(self) -> tuple[str, ...] | None:
        return None if self.names is None else tuple(str(n) for n in self.names)


class PatchFolderItem(_PatchItem):
    """A patch folder: ``images/`` + ``masks/`` (+ ``dem/``), or the Bijie layout; every patch
    is used like a small scene."""

    patches: FilePath = Field(description=(
            "a patch folder (`images/` + `masks/` (+ `dem/`), or the Bijie layout): every patch "
            "is used like a small scene, whole if smaller than `training.tile`"))
    pixel_size: Annotated[Number, Field(gt=0)] | None = Field(
        default=None, description=("patches only: pixel size in metres, for slope from DEMs "
                                   "without georeference; `null`: from the DEM"))

    def source(self) -> PatchSource:
        return PatchSource("patches", self.patches, self._names(), self.split,
                           pixel_size=self.pixel_size)


class L4SSet(_PatchItem):
    """A Landslide4Sense split (``img/image_N.h5`` + ``mask/mask_N.h5``, or one .h5 per patch)."""

    l4s: FilePath = Field(description=("a Landslide4Sense split (`img/image_N.h5` + "
                                   "`mask/mask_N.h5`, or one `.h5` per patch)"))
    bands: Annotated[tuple[str, ...], Field(min_length=1)] | None = Field(
        default=None, description=("l4s only: band names, e.g. `[B2, B3, B4, B8, slope, dem]`; "
                                   "they set the inputs (optical bands as `image_bands` 1–12 of "
                                   "the 14-channel stack, `slope`/`dem` as flags) unless "
                                   "`inputs` gives them. Without either: `[B2, B3, B4, B8, "
                                   "slope, dem]`. All sets must build the same channels"))

    @field_validator("bands")
    @classmethod
    def _known_bands(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        return None if value is None else tuple(BAND_NAMES[i] for i in band_indexes(value))

    def source(self) -> PatchSource:
        return PatchSource("l4s", self.l4s, self._names(), self.split, bands=self.bands)


def _item_kind(item: Any) -> str | None:
    """Which kind of data item ``item`` is, by the key that names its source."""
    if isinstance(item, dict):
        if "patches" in item and "l4s" in item:
            return None
        return "PatchFolderItem" if "patches" in item else "L4SSet" if "l4s" in item else "Scene"
    if isinstance(item, SceneSource):
        return "Scene"
    if isinstance(item, PatchFolderItem | L4SSet):
        return type(item).__name__
    return None


DISCRIMINATOR = Discriminator(_item_kind, custom_error_type="data_item",
                              custom_error_message="every item is a scene (image, mask, dem, aoi) "
                              "or a patch set (patches: or l4s:, not both)")
# Tags are class-like names, so that error messages leave them out of the key path.
LabelledItem = Annotated[Annotated[LabelledScene, Tag("Scene")] | Annotated[
    PatchFolderItem, Tag("PatchFolderItem")] | Annotated[L4SSet, Tag("L4SSet")], DISCRIMINATOR]
TargetItem = Annotated[Annotated[SceneSource, Tag("Scene")] | Annotated[
    PatchFolderItem, Tag("PatchFolderItem")] | Annotated[L4SSet, Tag("L4SSet")], DISCRIMINATOR]


def _scenes(items: tuple[Any, ...]) -> tuple[SceneSource, ...]:
    return tuple(SceneSource(**item.model_dump()) if type(item) is LabelledScene else item
                 for item in items if isinstance(item, SceneSource))


def _patches(items: tuple[Any, ...]) -> tuple[PatchSource, ...]:
    return tuple(item.source() for item in items if isinstance(item, PatchFolderItem | L4SSet))


class Data(Section):
    """Where training and validation pixels come from."""

    train: Annotated[tuple[LabelledItem, ...], Field(min_length=1)] = Field(
        description=("list of scenes, each `image`, `mask` and optionally `dem` (any grid or "
                     "CRS) and `aoi`, and/or patch sets (below)"))
    val: tuple[LabelledItem, ...] = Field(default=(), description=(
            "scenes and patch sets scored after every epoch; with `training.select: best` the "
            "epoch with the best F1 on them becomes `model.safetensors` (without them, training "
            "loss decides)"))


# -- sections ------------------------------------------------------------------------------------
class ModelSettings(Section):
    """The architecture and its size."""

    name: ModelName = Field(default="unet", description=(
            "architecture: `slidemap models` lists them"))
    width: int = Field(default=16, ge=1, le=MAX_WIDTH, strict=True, description=(
            "channels of the first stage (doubling per level)"))
    options: dict[str, Any] = Field(default_factory=dict, description=(
            "architecture keyword arguments, each taken only by the architectures named "
            "(none: fcn, pspnet): `depth` (unet, resunet, a_unet, d_unet, "
            "da_unet, unetpp, unetpp_spatial, unetpp_contextual, unetpp_spatial_contextual, "
            "fusion) down-samplings, 4 by default, e.g. `{depth: 3}`; `depths` (segformer) "
            "transformer blocks in each of its four stages, `[2, 2, 2, 2]` by default; "
            "`elevation_channels` (fusion) the last k input channels read by the elevation "
            "encoder, which must be all the terrain channels: 2 by default, or 1 when the "
            "inputs are two channels; set it when there are not two terrain channels, e.g. `1` "
            "for RGB + dem; `instance_norm_levels` (fusion) 0 to depth + 1: the optical "
            "encoder's finest levels use instance-batch norm, IBN-a, against changes of "
            "brightness and contrast between scenes; 0 by default, tried in "
            "`benchmarks/experiments.md`; `rates` (deeplabv3plus) the ASPP dilations, "
            "`[1, 6, 12, 18]` by default (1: the 1×1 branch), the paper's for 513 px crops: at "
            "256 px windows the coarsest features are 16 px, so a rate of 16 or more reads only "
            "padding off its centre and those weights never train; `[1, 3, 6, 9]` keeps every "
            "branch inside"))


class ColourJitter(Section):
    """Strengths of random brightness, contrast, saturation and hue changes of the optical bands,
    and the probabilities of a brightness inversion and of grey."""

    brightness: Fraction = 0.0
    contrast: Fraction = 0.0
    saturation: Fraction = 0.0
    invert: Fraction = 0.0
    hue: Annotated[Number, Field(ge=0, le=0.5)] = 0.0
    grayscale: Fraction = 0.0


JITTER_DEFAULT = ColourJitter(brightness=0.2, contrast=0.2, saturation=0.2)
ZoomRange = tuple[Annotated[Number, Field(gt=0)], Annotated[Number, Field(gt=0)]]


class TrainSettings(Section):
    """How the network is trained (``training:``)."""

    epochs: Annotated[StrictInt, Field(ge=1, le=100_000)] = Field(default=30, description=(
            "epochs"))
    batch_size: Annotated[StrictInt, Field(ge=1, le=4096)] = Field(default=8, description=(
            "windows per step"))
    tile: Annotated[StrictInt, Field(ge=MIN_TRAIN_TILE, le=MAX_TRAIN_TILE)] = Field(
        default=256, description="window size in working pixels")
    windows_per_epoch: Annotated[StrictInt, Field(ge=1, le=10_000_000)] = Field(
        default=128, description=("random windows per epoch, drawn anew each epoch from (seed, "
                                  "epoch)"))
    lr: Annotated[Number, Field(gt=0, le=10)] = Field(
        default=2e-3, description="peak learning rate of the one-cycle cosine schedule (AdamW)")
    weight_decay: Annotated[Number, Field(ge=0, le=10)] = Field(default=1e-4, description=(
            "AdamW weight decay"))
    min_valid: Fraction = Field(default=0.25, description=(
            "least fraction of labelled pixels a window must hold; a scene with no such "
            "window gets none of the epoch's windows (a warning names it)"))
    augment: StrictBool = Field(default=True, description=(
            "random flips and 90° rotations"))
    precision: Precision = Field(default="auto", description=(
            "`bf16` autocast, `fp32`, or `auto`: bf16 where the CPU computes in it (AVX-512 "
            "BF16 or AMX), fp32 elsewhere (emulated bf16 is about 11× slower)"))
    threads: Annotated[StrictInt, Field(ge=1, le=1024)] | None = Field(
        default=None, description="CPU threads for torch; `null`: torch's default")
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED)] = Field(
        default=0, description="seeds weights, windows, augmentation and the recipes below")
    mixup: Annotated[Number, Field(ge=0)] = Field(default=0.0, description=(
            "mixup α: each batch's tiles are blended pairwise with λ ~ Beta(α, α); targets "
            "become soft, a pixel stays valid only where both tiles are valid. 0.2–0.4 is usual;"
            " `0`: off"))
    colour_jitter: StrictBool | ColourJitter = Field(
        default=False, description=("random brightness, contrast and saturation of the optical "
                                    "bands only, in raw units; DEM and slope untouched. `true` ="
                                    " ±20 % each, or strengths per key, e.g. `{brightness: 0.4, "
                                    "contrast: 0.4, saturation: 0.2}`; `invert: p` also mirrors "
                                    "the luma about the window's mean in a fraction p of the "
                                    "windows (bright ground turns dark, band differences kept); "
                                    "`hue: h` turns RGB about the grey axis by up to h of a full"
                                    " turn either way (0–0.5, torchvision's unit); `grayscale: "
                                    "p` replaces RGB by its luma in a fraction p of the windows. "
                                    "RGB is the first three image bands, or with "
                                    "Landslide4Sense sets B4, B3, B2 wherever `bands` puts them"
                                    " (saturation, invert, hue and grayscale are refused for "
                                    "bands without them)"))
    random_scale: ZoomRange | None = Field(default=None, description=(
            "`[low, high]`: zoom every window by a factor drawn in that range, all channels and "
            "labels alike; zooming out leaves a border that is ignored by the loss. e.g. `[0.8, "
            "1.25]`; `null`: off"))
    zoom_context: StrictBool = Field(default=False, description=(
            "with `random_scale`: cut each window from ground `1 / factor` times its side and "
            "resample it onto the tile, so a zoom-out shows real surroundings instead of an "
            "ignored border"))
    hard_examples: Fraction = Field(default=0.0, description=(
            "fraction of each epoch's windows drawn where the model is wrong: from epoch 2 on, "
            "the model predicts the training scenes at the start of the epoch and a window is "
            "drawn with probability ∝ the summed |p − label| inside it; the rest stay uniform; "
            "`0`: off"))
    landslide_windows: Fraction = Field(default=0.0, description=(
            "fraction of each epoch's windows drawn around landslides: shared among the "
            "training scenes as uniform windows are (by labelled pixels), each placed around a "
            "landslide pixel drawn at random, so a window is drawn about in proportion to the "
            "landslide pixels it holds; for ground where uniform windows seldom show one (rare or "
            "small landslides); the rest stay uniform; `0`: off"))
    domain_batches: StrictBool = Field(default=False, description=(
            "every batch drawn from one domain (a scene, or one patch set's patches), picked "
            "by its labelled pixels, so that batch norm learns each domain's statistics on its "
            "own; for inputs from several sites or sensors; not with `hard_examples` or "
            "`landslide_windows`"))
    select: Select = Field(default="best", description=(
            "which epoch becomes `model.safetensors`: `best` by validation F1 (of epochs with "
            "equal F1 the earliest; without `data.val`, the lowest training loss), or `last` (no "
            "selection on the validation scenes, so their figures remain an honest estimate on "
            "unseen ground)"))
    freeze_encoder: StrictBool = Field(default=False, description=(
            "with `init`: train all but `model.encoder` (no gradients; its batch norms keep their "
            "statistics)"))
    frozen_epochs: Annotated[StrictInt, Field(ge=0, le=100_000)] = Field(default=0, description=(
            "with `init`: the encoder is frozen for the first N epochs, so the decoder and head "
            "first learn on the pretrained features, then every layer trains (linear probing "
            "then fine-tuning, LP-FT); the encoder joins the one-cycle schedule where it stands"
            " (near the peak rate after the warm-up), so pair it with `encoder_lr` below 1 to "
            "move it gently; `0`: off"))
    encoder_lr: Fraction = Field(default=1.0, description=(
            "the encoder's peak learning rate as a fraction of `lr` (its own AdamW group on the "
            "same one-cycle schedule), e.g. `0.1` with `init` so a pretrained encoder moves less"
            " than the decoder while a few tiles fine-tune it (`benchmarks/rgb_sites/`)"))
    weights_dtype: WeightsDtype = Field(default="float32", description=(
            "how `model.safetensors` stores its weights: `float16` halves the file (rounding "
            "~1e-3 relative per weight), `int8` quarters it (each kernel as whole numbers "
            "−127…127 times one scale per output channel; biases and BatchNorm stay float32); "
            "`int4` stores kernels of 2^18 weights or more (a network's deepest layers, most of "
            "its weights) in 4 bits, two to a byte, and the rest as `int8`; always loaded as "
            "float32. Validation scores the weights so rounded, as the file will give them. "
            "`slidemap export MODEL --weights int8 --out SMALL` converts a trained model"))
    average_from: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None, description=("from this epoch on, the weights after every optimiser step "
                                   "are averaged (SWA, dense as in SWAD) and the average becomes"
                                   " `model.safetensors`, with BatchNorm statistics estimated "
                                   "again on one more epoch's training windows; needs `select: "
                                   "last`. `history.csv` gives the averaged weights a row "
                                   "of their own after the last epoch's (`weights: averaged`"
                                   "; the others `epoch`), with the figures of the model "
                                   "file and `summary.json`. The checkpoint keeps the "
                                   "running average, so `--resume` ends with the same file; "
                                   "`null`: off"))
    members: Positive = Field(default=1, description=(
            "train that many networks (seeds `seed`, `seed + 1`, …) side by side in separate "
            "processes at `training.threads` each (all at once while that asks at most two "
            "threads per core, so three single-threaded members share two cores rather than wait"
            " for a second round; beyond that one per `threads` cores), into `OUT/member-K/`, "
            "and save them as one `OUT/model.safetensors` that averages their probabilities (an "
            "ensemble in one file, `members` in its sidecar, each member's seed, epoch, "
            "validation figures and run folder under `provenance.members`, from which `slidemap "
            "export --member K` gives that network its own run config). Member 0 reports to the "
            "terminal, the others to `member-K/train.log`. `slidemap train` only: fine-tuning, "
            "self-training, study and crossval train one network per run"))

    @field_validator("colour_jitter")
    @classmethod
    def _jitter_default(cls, value: bool | ColourJitter) -> bool | ColourJitter:
        return JITTER_DEFAULT if value is True else value

    @field_validator("random_scale")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError("random_scale must be [low, high] with 0 < low <= high, e.g. "
                             "[0.8, 1.25]")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainSettings:
        if self.average_from is not None:
            if self.average_from > self.epochs:
                raise ValueError(f"training.average_from must be an epoch from 1 to "
                                 f"{self.epochs}, got {self.average_from}")
            if self.select != "last":
                raise ValueError("training.average_from averages the weights up to the last "
                                 "epoch: set training.select: last")
        if self.frozen_epochs and (self.frozen_epochs >= self.epochs or self.freeze_encoder):
            raise ValueError(f"training.frozen_epochs ({self.frozen_epochs}) freezes the encoder "
                             f"for its first epochs, then trains it: make it less than epochs "
                             f"({self.epochs}), without freeze_encoder")
        if self.hard_examples + self.landslide_windows > 1:
            raise ValueError(f"training.hard_examples ({self.hard_examples:g}) and "
                             f"landslide_windows ({self.landslide_windows:g}) are fractions of "
                             "the same windows: make them add up to 1 at most")
        if self.domain_batches and (self.hard_examples or self.landslide_windows):
            raise ValueError("training.domain_batches draws each batch from one domain, and "
                             "hard_examples and landslide_windows place windows across all: "
                             "set those to 0, or domain_batches: false")
        if self.zoom_context and self.random_scale is None:
            raise ValueError("training.zoom_context needs training.random_scale: [low, high], "
                             "the range of zoom factors")
        return self

    @property
    def jitter(self) -> dict[str, float] | None:
        """The colour jitter's strengths as keyword arguments, or None when it is off."""
        return self.colour_jitter.model_dump() if isinstance(self.colour_jitter, ColourJitter) \
            else None


class PredictSettings(Section):
    """The prediction defaults the model file carries; validation during training predicts as
    that file will be run."""

    tile: Annotated[StrictInt, Field(ge=MIN_TILE, le=MAX_TILE)] = Field(
        default=256, description=("window size for validation (and the hard-example error maps);"
                                  " stored in the model file as the window size `predict` uses "
                                  "unless given `--tile`"))
    overlap: Annotated[StrictInt, Field(ge=0)] = Field(default=64, description=(
            "overlap between validation windows, blended; stored in the model file like `tile`"))
    batch_size: Positive = Field(default=8, description=(
            "windows per model call in validation"))
    scales: Annotated[tuple[Annotated[Number, Field(ge=SCALE_RANGE[0], le=SCALE_RANGE[1])], ...],
                      Field(min_length=1, max_length=MAX_SCALES)] = Field(
        default=(1.0,), description=(
            "stored in the model file: `predict` and `evaluate` predict every window at each of "
            "these scales and average the probabilities (e.g. `[1.0, 0.5]`: also shrunk to half "
            "its side, a coarser view that transfers better to new ground, see "
            "`benchmarks/experiments.md`); `--scales` overrides. Validation during training "
            "predicts as the model file will (these scales, `tile`, `overlap`)"))
    threshold: Annotated[Number, Field(gt=0, lt=1)] = Field(
        default=0.5, description=("stored in the model file: the probability above which a pixel"
                                  " is mapped as landslide (`predict`, `evaluate`, the "
                                  "inventory); `--threshold` overrides. Validation during "
                                  "training scores at it too"))

    @field_validator("scales")
    @classmethod
    def _distinct(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(set(value)) != len(value):
            raise ValueError("scales must be distinct")
        return value

    @model_validator(mode="after")
    def _overlap_below_tile(self) -> PredictSettings:
        if self.overlap >= self.tile:
            raise ValueError(f"predict.overlap must be smaller than the tile ({self.tile})")
        return self


class SelfTrainSettings(Section):
    """Pseudo-label rounds on unlabelled target data (``selftrain:``)."""

    target: Annotated[tuple[TargetItem, ...], Field(min_length=1)] = Field(
        description=("for `slidemap selftrain`: unlabelled target data, scenes (`image`, "
                     "optional `dem`, optional `mask` used only to report figures) and/or patch "
                     "sets as in `data` (masks, if present, only for figures)"))
    rounds: Positive = Field(default=3, description=(
            "pseudo-label rounds after round 0 (the run config as is, on the labelled source)"))
    threshold: Annotated[Number, Field(ge=0.5, le=1)] = Field(
        default=0.7, description=("t in [0.5, 1]: target pixels with p ≥ t become landslide, p ≤"
                                  " 1 − t background, the rest is ignored (255)"))
    loss: LossSpec = Field(default_factory=_soft_ce,
                           description=(
            "loss of the pseudo-label rounds (e.g. `{soft_ce: {smoothing: 0.1}, dice: 1}`)"))
    epochs: Positive | None = Field(default=None, description=(
            "epochs per pseudo-label round; every round starts from the previous round's model; "
            "`null`: `training.epochs`"))

    @property
    def target_scenes(self) -> tuple[SceneSource, ...]:
        return _scenes(self.target)

    @property
    def target_patches(self) -> tuple[PatchSource, ...]:
        return _patches(self.target)

    def to_dict(self) -> dict[str, Any]:
        return {"target": _sources_dict(self.target_scenes, self.target_patches),
                "rounds": self.rounds, "threshold": self.threshold, "loss": self.loss,
                "epochs": self.epochs}


class CrossvalSettings(Section):
    """Spatial cross-validation (``crossval:``, see ``slidemap.evaluation.folds``)."""

    blocks: tuple[Positive, Positive] = Field(default=(2, 2), description=(
            "for `slidemap crossval`: rows × columns of blocks per scene of `data.train`, cut at"
            " quantiles of the labelled pixels so that each block holds about the same labelled "
            "ground"))
    folds: Annotated[StrictInt, Field(ge=2)] = Field(default=4, description=(
            "blocks are dealt to this many folds in turn (scene by scene, row by row); one "
            "training per fold and seed"))
    buffer: Annotated[StrictInt, Field(ge=0)] | None = Field(
        default=None, description=("working px around a fold's blocks that its training never "
                                   "sees (labels ignored, inputs blanked); `null` = "
                                   "`training.tile`, one training window, the least allowed; "
                                   "no less than the terrain descriptors' reach (the largest "
                                   "`inputs.relief_m` or `roughness_m`, in working px)"))
    seeds: Annotated[tuple[StrictInt, ...], Field(min_length=1)] = Field(
        default=(0, 1), description=(
            "seeds every fold is trained with (`--seeds` overrides)"))

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(value)) != len(value):
            raise ValueError("seeds must be distinct")
        return value


# -- the run -------------------------------------------------------------------------------------
class RunConfig(Section):
    """A training run: data, inputs, model, loss, training, prediction defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid",
                              json_schema_extra={"title": "slidemap run config"})

    name: str = Field(default="run", description=(
            "run name, kept in the model's provenance (default: the config's file name)"))
    data: Data = Field(description="training and validation data")
    selftrain: SelfTrainSettings | None = Field(default=None, description="for slidemap selftrain")
    inputs: InputSpec = Field(default_factory=dict, validate_default=True,
                              description="the model's input channels")
    model: ModelSettings = Field(default_factory=ModelSettings, description="the architecture")
    loss: LossSpec = Field(default_factory=_bce_dice,
                           description=(
            "weighted sum of losses, `name: weight` or `name: {weight: w, option: value}`; "
            "names: bce, wbce, wce, focal, dice, lovasz, ohem, soft_ce. Each reads only the "
            "labelled pixels (label 255 counts in none); options with their defaults: `bce` binary "
            "cross-entropy; `wbce` {pos_weight: null, max_pos_weight: 50.0} BCE with the "
            "landslide term × pos_weight (null: the batch's background/landslide pixel ratio, "
            "clipped to [1, max_pos_weight]); `wce` {weights: null} cross-entropy weighted "
            "`[w_background, w_landslide]`, normalised by the weights so only their ratio counts "
            "(null: the batch's inverse class frequencies); `focal` {alpha: 0.25, gamma: 2.0} "
            "−α_t (1 − p_t)^γ log p_t, alpha the weight of landslide pixels and 1 − alpha of "
            "background; `dice` {smooth: 1.0} soft Dice 1 − (2Σpt + s) / (Σp + Σt + s) over the "
            "whole batch, not per image; `lovasz` {per_image: true} Lovász hinge (IoU surrogate), "
            "averaged over images or, false, over the batch as one; `ohem` {keep: 0.25, "
            "min_kept: 256} BCE of the hardest keep fraction of pixels, at least min_kept; "
            "`soft_ce` {smoothing: 0.0} BCE on targets t·(1 − ε) + ε/2"))
    training: TrainSettings = Field(default_factory=TrainSettings, description="training")
    predict: PredictSettings = Field(default_factory=PredictSettings,
                                     description="prediction defaults stored in the model file")
    init: FilePath | None = Field(default=None, description=(
            "a model file to start from (fine-tuning), or a shipped model's name (`slidemap "
            "models` lists them): same `model` and the same input channels,"
            " else a one-line error. Its weights are the start; the normalisation statistics "
            "are computed again from `data.train` (the new tiles), as in any run, and the new "
            "model file keeps those. With `init` and `data.val`, `slidemap train` also writes "
            "`finetune.json` (figures on `data.val` before and after), as `slidemap finetune` "
            "does; without `data.val` it trains from `init` with no figures (where `slidemap "
            "finetune` refuses); `null`: none"))
    crossval: CrossvalSettings = Field(default_factory=CrossvalSettings,
                                       description="for slidemap crossval")
    _source: Path | None = PrivateAttr(None)

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs_from_l4s_bands(cls, value: Any, info: Any) -> Any:
        """Channels named by Landslide4Sense ``bands:`` become the inputs unless ``inputs``
        gives its own ``image_bands``; ``dem`` or ``slope`` alone change only that channel
        (``--set inputs.slope=false`` drops slope, not the bands)."""
        if not isinstance(value, dict) or "image_bands" in value:
            return value
        sets = _l4s_sets(info.data)
        return {**l4s_inputs(sets[0].bands or DEFAULT_BANDS), **value} if sets else value

    @model_validator(mode="after")
    def _same_channels(self) -> RunConfig:
        """Every Landslide4Sense set's bands must build the model's channels."""
        for source in _l4s_sets({"data": self.data, "selftrain": self.selftrain}):
            if source.bands is None:
                continue
            named = self.inputs.model_copy(update=l4s_inputs(source.bands))
            if named != self.inputs:
                raise ValueError(f"l4s {source.root} bands {list(source.bands)} build other "
                                 f"channels than the inputs {self.inputs.channels}: give every "
                                 "set the same bands, or drop bands to use inputs")
        return self

    @model_validator(mode="after")
    def _colour_of_l4s_bands(self) -> RunConfig:
        """Saturation, inversion, hue and grayscale change the red, green and blue bands, which
        Landslide4Sense inputs without B4, B3 and B2 do not have."""
        jitter = self.training.jitter or {}
        colour = [k for k in ("saturation", "invert", "hue", "grayscale") if jitter.get(k)]
        if colour and self.colour_bands is None and self._l4s:
            bands = [BAND_NAMES[b - 1] for b in self.inputs.image_bands]
            raise ValueError(f"training.colour_jitter {', '.join(colour)} change the red, "
                             f"green and blue bands (B4, B3, B2), and the Landslide4Sense "
                             f"bands {bands} lack some: add them, or set {', '.join(colour)} "
                             "to 0 (e.g. colour_jitter: {brightness: 0.2, contrast: 0.2})")
        return self

    @model_validator(mode="after")
    def _fusion_streams(self) -> RunConfig:
        """The fusion network's elevation encoder reads the last k channels: they must be the
        terrain channels, all of them (RGB alone once fed green and blue to it silently)."""
        if self.model.name != "fusion":
            return self
        channels = self.inputs.channels
        terrain = channels[len(self.inputs.image_bands):]
        if not terrain:
            raise ValueError(f"model fusion fuses the optical bands with terrain, but the inputs "
                             f"{channels} have no terrain channel: add dem, slope, relief_m, "
                             "curvature or roughness_m, or choose another model")
        given = self.model.options.get("elevation_channels")
        default = min(2, len(channels) - 1)
        if (default if given is None else given) != len(terrain):
            raise ValueError(f"model fusion's elevation encoder would read the last "
                             f"{default if given is None else given} of the channels "
                             f"{channels}, but {len(terrain)} are terrain ({terrain}): set "
                             f"model.options.elevation_channels: {len(terrain)}")
        return self

    @model_validator(mode="after")
    def _members_from_scratch(self) -> RunConfig:
        """An ensemble's members train from scratch with their own seeds; fine-tuning (``init``)
        trains one network and reports on it (finetune.json)."""
        if self.init is not None and self.training.members > 1:
            raise ValueError(f"training.members: {self.training.members} trains an ensemble from"
                             " scratch, and init fine-tunes one network: drop init, or set "
                             "members: 1")
        return self

    def changed(self, **fields: Any) -> Self:
        """A copy with ``fields`` replaced (``train`` is ``training``), checked like a config
        file's values; it keeps the file it was read from."""
        if "train" in fields:
            fields["training"] = fields.pop("train")
        where = f"config {self._source}" if self._source else "config"
        copy = validated(type(self), {**dict(self), **fields}, where)
        copy._source = self._source
        return copy

    def without_data(self) -> RunConfig:
        """The same recipe with no scenes or patch sets: a cross-validation fold brings its
        training arrays itself (cut from the scenes' blocks)."""
        copy = self.model_copy(update={"data": Data.model_construct(train=(), val=())})
        copy._source = self._source
        return copy

    @property
    def source(self) -> Path | None:
        """The file the config was read from (None when built in code)."""
        return self._source

    @property
    def train(self) -> TrainSettings:
        return self.training

    @property
    def _l4s(self) -> bool:
        return bool(_l4s_sets({"data": self.data, "selftrain": self.selftrain}))

    @property
    def colour_bands(self) -> tuple[int, int, int] | None:
        """Where the red, green and blue bands are among the optical channels (0-based), for
        the colour jitter: with Landslide4Sense sets, whose image bands are Sentinel-2's, B4,
        B3 and B2 wherever they were picked (the default bands start B2 blue, B3 green); else
        the first three; None without them."""
        bands = self.inputs.image_bands
        if self._l4s:
            wanted = [BAND_NAMES.index(name) + 1 for name in RGB_BANDS]
            if not all(band in bands for band in wanted):
                return None
            red, green, blue = (bands.index(band) for band in wanted)
            return red, green, blue
        return (0, 1, 2) if len(bands) >= 3 else None

    @property
    def train_scenes(self) -> tuple[SceneSource, ...]:
        return _scenes(self.data.train)

    @property
    def val_scenes(self) -> tuple[SceneSource, ...]:
        return _scenes(self.data.val)

    @property
    def train_patches(self) -> tuple[PatchSource, ...]:
        return _patches(self.data.train)

    @property
    def val_patches(self) -> tuple[PatchSource, ...]:
        return _patches(self.data.val)

    def input_files(self) -> list[Path]:
        """Every local file the run reads by name besides the files of ``init`` (its config,
        its scenes' rasters): no output of the run may replace one. A GDAL name that is no
        local file (``/vsizip/...``, a URL) is none an output could replace."""
        scenes = (*self.train_scenes, *self.val_scenes,
                  *(self.selftrain.target_scenes if self.selftrain else ()))
        files = [self.source, *(p for s in scenes for p in (s.image, s.mask, s.dem, s.aoi))]
        return [Path(p) for p in files if p is not None and is_local(p)]

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view for provenance records."""
        out = {
            "name": self.name, "train": _sources_dict(self.train_scenes, self.train_patches),
            "val": _sources_dict(self.val_scenes, self.val_patches),
            "inputs": self.inputs.to_dict(), "model": self.model.model_dump(), "loss": self.loss,
            "training": self.training.model_dump(), "predict": self.predict.model_dump(),
        }
        if self.init is not None:
            out["init"] = str(self.init)
        if self.selftrain is not None:
            out["selftrain"] = self.selftrain.to_dict()
        if self.crossval != CrossvalSettings():
            out["crossval"] = self.crossval.model_dump()
        return out


def _l4s_sets(fields: dict[str, Any]) -> list[PatchSource]:
    data, selftrain = fields.get("data"), fields.get("selftrain")
    patches = [*(_patches(data.train) + _patches(data.val) if data is not None else ()),
               *(selftrain.target_patches if selftrain is not None else ())]
    return [p for p in patches if p.kind == "l4s"]


def _sources_dict(scenes: tuple[SceneSource, ...], patches: tuple[PatchSource, ...]
                  ) -> list[dict[str, Any]]:
    return [{k: (str(v) if v is not None else None) for k, v in s.model_dump().items()}
            for s in scenes] + [p.to_dict() for p in patches]
