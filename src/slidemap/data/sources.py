"""Patch sets as training, validation and target data, held like scenes.

A run config names a patch folder (``patches:``, the ``images/`` + ``masks/`` or Bijie layout) or a
Landslide4Sense split (``l4s:``), optionally narrowed to some of its patches by name or by a seeded
draw, so that "ten labelled tiles of a new site" is a line of YAML. Every patch becomes a
:class:`PatchArrays`, a :class:`~slidemap.data.dataset.SceneArrays` at the model's scale, so
random windows and validation treat patches and scenes alike; the native labels are kept for
scoring on the patch's own grid after the prediction is brought back (scale promotion).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from slidemap.data.channels import InputSpec, stack_channels
from slidemap.data.dataset import SceneArrays, load_scene_arrays
from slidemap.data.l4s import BAND_NAMES, TERRAIN, L4SDataset, band_indexes
from slidemap.data.patches import IGNORE, PatchDataset, open_patch_dataset
from slidemap.data.scaling import promote
from slidemap.errors import SlidemapError

KINDS = ("patches", "l4s")
PARTS = ("train", "rest")
OPTIONS = {"patches": {"names", "split", "pixel_size"}, "l4s": {"bands", "names", "split"}}
OPTICAL = len(BAND_NAMES) - len(TERRAIN)


class LabelledScene(Protocol):
    """A scene in a run config (``SceneSource`` of the config schema): the rasters to read."""

    @property
    def image(self) -> Path: ...

    @property
    def mask(self) -> Path | None: ...

    @property
    def dem(self) -> Path | None: ...

    @property
    def aoi(self) -> Path | None: ...


@dataclass(frozen=True)
class Split:
    """A seeded draw of ``count`` patches: ``part: train`` keeps them, ``part: rest`` the others."""

    count: int
    seed: int = 0
    part: str = "train"


@dataclass(frozen=True)
class PatchSource:
    """A patch set in a run config, and which of its patches to use (all by default)."""

    kind: str
    root: Path
    names: tuple[str, ...] | None = None
    split: Split | None = None
    bands: tuple[str, ...] | None = None  # Landslide4Sense band names
    pixel_size: float | None = None  # metres, for slope from DEMs without georeference

    def to_dict(self) -> dict:
        out: dict[str, Any] = {self.kind: str(self.root)}
        if self.names is not None:
            out["names"] = list(self.names)
        if self.split is not None:
            out["split"] = vars(self.split)
        if self.bands is not None:
            out["bands"] = list(self.bands)
        if self.pixel_size is not None:
            out["pixel_size"] = self.pixel_size
        return out


@dataclass
class PatchArrays(SceneArrays):
    """A patch at the model's scale, with its validity and labels (None if unlabelled) on the
    patch's own grid, where predictions are brought back and scored."""

    native_valid: np.ndarray
    labels: np.ndarray | None = None


def is_patch_source(item: Any) -> bool:
    return isinstance(item, dict) and any(kind in item for kind in KINDS)


def parse_patch_source(item: dict, where: str) -> PatchSource:
    """A ``{patches: DIR, ...}`` or ``{l4s: DIR, ...}`` config item, checked key by key."""
    kinds = [kind for kind in KINDS if kind in item]
    if len(kinds) > 1:
        raise SlidemapError(f"{where}: an item is either patches: or l4s:, not both")
    kind = kinds[0]
    extra = sorted(set(item) - {kind} - OPTIONS[kind], key=str)
    if extra:
        raise SlidemapError(f"{where}: unknown {kind} key(s) {extra}: valid ones are "
                            f"{sorted(OPTIONS[kind])}")
    if not isinstance(item[kind], str) or not item[kind]:
        raise SlidemapError(f"{where}: {kind} must be a folder path, got {item[kind]!r}")
    names = item.get("names")
    if names is not None and (not isinstance(names, list) or not names):
        raise SlidemapError(f"{where}: names must be a non-empty list of patch names (file "
                            f"stems), got {names!r}")
    if names is not None and "split" in item:
        raise SlidemapError(f"{where}: give either names or split, not both")
    bands = item.get("bands")
    if bands is not None:
        if not isinstance(bands, list) or not bands:
            raise SlidemapError(f"{where}: bands must be a list of Landslide4Sense band names, "
                                f"e.g. [B2, B3, B4, B8, slope, dem], got {bands!r}")
        bands = tuple(BAND_NAMES[i] for i in band_indexes(bands))
    pixel_size = item.get("pixel_size")
    if pixel_size is not None and not (_is_number(pixel_size) and pixel_size > 0):
        raise SlidemapError(f"{where}: pixel_size must be metres > 0, got {pixel_size!r}")
    return PatchSource(
        kind=kind, root=Path(item[kind]),
        names=None if names is None else tuple(str(n) for n in names),
        split=_split(item["split"], where) if "split" in item else None,
        bands=bands, pixel_size=None if pixel_size is None else float(pixel_size),
    )


def _split(raw: Any, where: str) -> Split:
    usage = "split must be {count: N, seed: S, part: train|rest}"
    if not isinstance(raw, dict) or set(raw) - {"count", "seed", "part"} or "count" not in raw:
        raise SlidemapError(f"{where}: {usage}, got {raw!r}")
    split = Split(**raw)
    if not (_is_int(split.count) and split.count >= 1 and _is_int(split.seed)
            and split.part in PARTS):
        raise SlidemapError(f"{where}: {usage} with count >= 1, got {raw!r}")
    return split


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- channels ------------------------------------------------------------------------------------
def l4s_inputs(bands: Sequence[str]) -> dict:
    """The InputSpec fields that Landslide4Sense band names stand for."""
    names = [BAND_NAMES[i] for i in band_indexes(bands)]
    return {"image_bands": tuple(BAND_NAMES.index(n) + 1 for n in names if n not in TERRAIN),
            "dem": "dem" in names, "slope": "slope" in names}


def l4s_bands(spec: InputSpec) -> list[str]:
    """Landslide4Sense band names that build ``spec``'s channels."""
    if max(spec.image_bands) > OPTICAL:
        raise SlidemapError(f"image bands {list(spec.image_bands)} are not all Landslide4Sense "
                            f"optical bands (1-{OPTICAL} = B1-B12): slope and DEM are the inputs "
                            "slope/dem")
    return ([BAND_NAMES[b - 1] for b in spec.image_bands] + ["dem"] * spec.dem
            + ["slope"] * spec.slope)


# -- reading -------------------------------------------------------------------------------------
def open_patch_set(root: Path, spec: InputSpec, kind: str | None = None,
                   pixel_size: float | None = None) -> PatchDataset | L4SDataset:
    """The dataset under ``root`` reading ``spec``'s channels; the kind is detected if not given.

    Landslide4Sense is recognised by ``img/`` or ``*.h5`` files, anything else is a patch folder.
    """
    root = Path(root)
    if spec.relief_m or spec.curvature or spec.roughness_m:
        raise SlidemapError(f"inputs relief_m, curvature and roughness_m need georeferenced "
                            f"scenes, not patches ({root}): use dem and slope for patch sets")
    if kind is None:
        kind = "l4s" if (root / "img").is_dir() or any(root.glob("*.h5")) else "patches"
    if kind == "l4s":
        return L4SDataset(root, bands=l4s_bands(spec))
    dataset = open_patch_dataset(root, bands=spec.image_bands, pixel_size=pixel_size)
    if spec.needs_dem and not dataset.has_dem:
        raise SlidemapError(f"the model needs a DEM (channels {spec.channels}) but patch folder "
                            f"{root} has no dem/ for every image: add it or use an image-only "
                            "model")
    if spec.slope and not dataset.has_slope:
        raise SlidemapError(f"the model needs slope but the DEMs of {root} have no georeference: "
                            "give the pixel size in metres (pixel_size: in a config, "
                            "--pixel-size for predict)")
    return dataset


def select(names: Sequence[str], source: PatchSource) -> list[int]:
    """Indexes of the patches ``source`` asks for, in dataset order (a draw is seeded)."""
    position = {name: i for i, name in enumerate(names)}
    if source.names is not None:
        missing = [n for n in source.names if n not in position]
        if missing:
            raise SlidemapError(f"patch {missing[0]!r} is not in {source.root} ({len(names)} "
                                "patches): names are file stems")
        return [position[n] for n in source.names]
    if source.split is None:
        return list(range(len(names)))
    split = source.split
    if split.count > len(names) or (split.part == "rest" and split.count == len(names)):
        raise SlidemapError(f"split count {split.count} leaves no patch of {source.root} "
                            f"({len(names)} patches) for part {split.part}: lower the count")
    drawn = set(np.random.default_rng(split.seed).choice(len(names), split.count,
                                                         replace=False).tolist())
    keep = drawn if split.part == "train" else set(range(len(names))) - drawn
    return sorted(keep)


def load_arrays(scenes: Sequence[LabelledScene], patch_sets: Sequence[PatchSource],
                spec: InputSpec) -> list[SceneArrays]:
    """Labelled scenes and patch sets of a run config as arrays, scenes first."""
    arrays = [load_scene_arrays(s.image, s.mask, s.dem, spec, s.aoi) for s in scenes]
    for source in patch_sets:
        arrays += load_patch_arrays(source, spec)
    return arrays


def load_patch_arrays(source: PatchSource, spec: InputSpec,
                      labelled: bool = True) -> list[PatchArrays]:
    """The selected patches at ``spec.scale``; ``labelled`` demands labels for every patch."""
    dataset = open_patch_set(source.root, spec, source.kind, source.pixel_size)
    if labelled and not dataset.labelled:
        raise SlidemapError(f"patch set {source.root} has no labels (masks/): training and "
                            "validation data need them")
    arrays = [patch_arrays(dataset[i], spec) for i in select(dataset.names, source)]
    if not any(a.valid.any() for a in arrays):
        raise SlidemapError(f"patch set {source.root} has no valid pixel in the chosen patches: "
                            "check its nodata and masks")
    return arrays


def patch_arrays(sample: dict, spec: InputSpec) -> PatchArrays:
    """One patch sample as model channels at ``spec.scale``; nodata anywhere becomes ignore.

    Invalid pixels are NaN before up-sampling, so every promoted pixel that interpolates from
    nodata is invalid too; labels are promoted by nearest neighbour.
    """
    x = stack_channels(sample, spec)
    valid = sample["valid"] & np.isfinite(x).all(axis=0)
    x = np.where(valid, x, np.nan).astype(np.float32)
    labels = sample.get("mask")
    if labels is not None:
        labels = np.where(valid, labels, IGNORE).astype(np.uint8)
    if spec.scale != 1.0:
        x = promote(x, spec.scale).astype(np.float32)
    finite = np.isfinite(x).all(axis=0)
    if labels is None:
        target = np.where(finite, 0, IGNORE).astype(np.uint8)
    else:
        target = labels if spec.scale == 1.0 else promote(labels, spec.scale, "mask")
        target = np.where(finite, target, IGNORE).astype(np.uint8)
    return PatchArrays(sample["name"], x, target, native_valid=valid, labels=labels)
