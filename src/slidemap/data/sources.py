"""Patch sets as training, validation and target data, held like scenes.

A run config names a patch folder (``patches:``, the ``images/`` + ``masks/`` or Bijie layout) or a
Landslide4Sense split (``l4s:``), optionally narrowed to some of its patches by name or by a seeded
draw, so that "ten labelled tiles of a new site" is a line of YAML. Every patch becomes a
:class:`PatchArrays`, a :class:`~slidemap.data.dataset.SceneArrays` at the model's scale, so
random windows and validation treat patches and scenes alike; the native labels are kept for
scoring on the patch's own grid after the prediction is brought back (scale promotion).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from slidemap.data.channels import InputSpec, stack_channels
from slidemap.data.dataset import SceneArrays, load_scene_arrays
from slidemap.data.l4s import L4SDataset, is_h5_file
from slidemap.data.machine import MEMORY_SOURCES, physical_memory_mb
from slidemap.data.names import absolute_name
from slidemap.data.patches import (
    IGNORE,
    MAX_PATCH_BYTES,
    PatchDataset,
    open_patch_dataset,
    patch_fits,
)
from slidemap.data.scaling import promote, promoted_size
from slidemap.data.scene import Scene
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.schema.config import PatchSource, SceneSource
from slidemap.schema.values import BAND_NAMES, MAX_TILE, MIN_TRAIN_TILE, TERRAIN

OPTICAL = len(BAND_NAMES) - len(TERRAIN)
MAX_PATCH_HELD = 2**31  # what mapping one patch holds at once (patch_held_bytes)


@dataclass
class PatchArrays(SceneArrays):
    """A patch at the model's scale, with its validity and labels (None if unlabelled) on the
    patch's own grid, where predictions are brought back and scored."""

    native_valid: np.ndarray
    labels: np.ndarray | None = None


# -- channels ------------------------------------------------------------------------------------
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
    A ``pixel_size`` for a Landslide4Sense split is refused: it was ignored without a word.
    """
    root = Path(root)
    if spec.relief_m or spec.curvature or spec.roughness_m:
        raise SlidemapError(f"inputs relief_m, curvature and roughness_m need georeferenced "
                            f"scenes, not patches ({root}): use dem and slope for patch sets")
    if kind is None:
        kind = "l4s" if is_l4s_folder(root) else "patches"
    if kind == "l4s":
        if pixel_size is not None:  # the slope it would set comes with the patches
            raise SlidemapError(f"{root} is a Landslide4Sense split, whose patches carry their "
                                f"slope: a pixel size ({pixel_size:g} m, --pixel-size) applies "
                                "to patch folders with dem/ only; leave it out")
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
    grey = dataset.eight_bit_dem() if spec.needs_dem else None
    if grey:
        warnings.warn(grey, SlidemapWarning, stacklevel=2)
    return dataset


def is_l4s_folder(root: Path) -> bool:
    """Whether ``root`` holds a Landslide4Sense split (``img/``, or the ``.h5``/``.hdf5`` files
    that :class:`L4SDataset` reads, so a folder it reads is never taken for a patch folder)."""
    return (root / "img").is_dir() or (root.is_dir() and any(map(is_h5_file, root.iterdir())))


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


def shared_with_training(train: tuple[Sequence[SceneSource], Sequence[PatchSource]],
                         val: tuple[Sequence[SceneSource], Sequence[PatchSource]],
                         spec: InputSpec) -> str | None:
    """The first validation item training reads too: a scene whose image file training reads
    with labelled ground in common (no area of interest on either, or overlapping ones), or
    patches both select from one set; None when none is (as far as files tell: two crops of
    one orthophoto are not caught). Images compare by :func:`absolute_name`: a GDAL name keeps
    its ``//``. Disjoint AOIs of one scene are a spatial split, such as newsite's example."""
    for scene in val[0]:
        for trained in train[0]:
            if (absolute_name(scene.image) == absolute_name(trained.image)
                    and _share_ground(scene, trained)):
                return f"scene {scene.image}" + (", overlapping areas of interest"
                                                 if scene.aoi and trained.aoi else "")
    for checked in val[1]:
        for source in train[1]:
            both = common_patches(checked, source, spec)
            if both:
                return f"{len(both)} patch(es) of {checked.root}, e.g. {both[0]}"
    return None


def common_patches(checked: PatchSource, other: PatchSource, spec: InputSpec) -> list[str]:
    """The names of the patches of ``checked``'s set that both sources select (none where they
    name other folders), in the set's order."""
    if Path(checked.root).resolve() != Path(other.root).resolve():
        return []
    with warnings.catch_warnings():  # said when the run reads the set
        warnings.simplefilter("ignore", SlidemapWarning)
        names = open_patch_set(checked.root, spec, checked.kind, checked.pixel_size).names
    return [names[i] for i in sorted(set(select(names, checked)) & set(select(names, other)))]


def _share_ground(first: SceneSource, second: SceneSource) -> bool:
    """Whether two sources of one image label ground in common (see :meth:`Scene.shares_aoi`)."""
    if first.aoi is None or second.aoi is None:
        return True
    with warnings.catch_warnings():  # said when the run read the scenes
        warnings.simplefilter("ignore", SlidemapWarning)
        with Scene(first.image, aoi=first.aoi) as scene:
            return scene.shares_aoi(second.aoi)


def load_arrays(scenes: Sequence[SceneSource], patch_sets: Sequence[PatchSource],
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
    chosen = select(dataset.names, source)
    check_patches_held(dataset, spec, chosen, training=True)
    arrays: list[PatchArrays] = []
    held = smallest = 0
    for number, index in enumerate(chosen, 1):
        arrays.append(replace(patch_arrays(dataset[index], spec), source=str(source.root)))
        held += arrays[-1].x.nbytes
        smallest = min(smallest or held, arrays[-1].x.nbytes)
        # the patches read and the rest at the smallest size read: a set of one size (a
        # Landslide4Sense split) is refused after its first patch
        check_set_fits(source.root, arrays[0], held + (len(chosen) - number) * smallest,
                       len(chosen), spec.scale)
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
        check_promoted_size(sample["name"], x.shape, spec.scale)
        x = promote(x, spec.scale).astype(np.float32)
    finite = np.isfinite(x).all(axis=0)
    if labels is None:
        target = np.where(finite, 0, IGNORE).astype(np.uint8)
    else:
        target = labels if spec.scale == 1.0 else promote(labels, spec.scale, "mask")
        target = np.where(finite, target, IGNORE).astype(np.uint8)
    return PatchArrays(sample["name"], x, target, native_valid=valid, labels=labels)


def check_set_fits(root: Path, first: PatchArrays, need: int, count: int, scale: float) -> None:
    """Refuse a patch set whose channels, held whole at ``scale`` as training holds them, would
    take ``need`` bytes, more than the memory this process may use, before the rest of it is
    read: the whole set was read first and ended as "out of memory: pass a smaller scene",
    which a patch set does not have."""
    machine = physical_memory_mb()
    if machine and need > machine * 2**20:
        channels, height, width = first.x.shape
        raise SlidemapError(
            f"patch set {root}: its {count:,} patches at scale {scale:g} ({first.name}: "
            f"{width:,} × {height:,} px, {channels} channel(s)) take about "
            f"{need / 2**30:,.1f} GB, more than the {machine / 2**10:,.0f} GB this process may "
            f"use ({MEMORY_SOURCES}): "
            "lower inputs.scale, or take fewer patches (split: or names:)")


def check_promoted_size(name: str, shape: tuple[int, ...], scale: float) -> None:
    """Refuse, before it is allocated, a patch that ``scale`` would up-sample beyond what a patch
    may be read as (``MAX_TILE`` px a side, ``MAX_PATCH_BYTES``): 128 px at scale 1000 tried to
    allocate 393 GB and ended as "out of memory: lower --memory-mb", which does not help; or
    shrink below the smallest training window (``MIN_TRAIN_TILE``), mapping nothing."""
    channels, (height, width) = shape[0], promoted_size(shape[-2], shape[-1], scale)
    if scale < 1 and min(height, width) < MIN_TRAIN_TILE:  # 1e-300 made every patch 1 px
        raise SlidemapError(
            f"patch {name} at scale {scale:g} would be {width:,} × {height:,} px: a patch shrunk "
            f"below {MIN_TRAIN_TILE} px a side leaves the network too few pixels to map; raise "
            "the scale (inputs.scale, or predict --scale)")
    size = channels * height * width * np.dtype(np.float32).itemsize
    if not patch_fits(height, width, size):
        raise SlidemapError(
            f"patch {name} at scale {scale:g} would be {width:,} × {height:,} px with {channels} "
            f"channel(s), {size / 2**20:,.0f} MB: a patch is held whole, at most {MAX_TILE} px "
            f"a side and {MAX_PATCH_BYTES // 2**20} MB; lower the scale (inputs.scale, or "
            "predict --scale)")


def patch_held_bytes(height: int, width: int, channels: int, scale: float) -> int:
    """The bytes mapping a ``height`` × ``width`` px patch of ``channels`` model channels at
    ``scale`` holds at once, at its largest, from the copies the patch path makes: on the
    patch's grid its bands as float32, their stack, the stack with nodata as NaN and its copy
    (16 B a channel); while up-sampled, the native stack and the resize and its copy (8 B a
    channel of each); on the model's grid, while the set's statistics are taken, the float32
    stack, its float64 copy and two float64 temporaries (29 B a channel). An RGB patch measured
    51, 88 and 352 B a native pixel at scale 0.5, 1 and 2 (tracemalloc), as this gives."""
    native = height * width
    model = math.prod(promoted_size(height, width, scale))
    return max((16 * channels + 3) * native,
               (8 * channels + 4) * native + 8 * channels * model,
               (29 * channels + 1) * model)


def check_patches_held(dataset: PatchDataset | L4SDataset, spec: InputSpec,
                       indexes: Sequence[int] | None = None, training: bool = False) -> None:
    """Refuse, from the images' headers before any patch is read, a set with a patch (of
    ``indexes``, all by default) that mapping or training whole at ``spec.scale`` would hold
    more than ``MAX_PATCH_HELD`` of: the caps on a patch's stored values count one copy, and an
    8192² px RGB patch (192 MB of values) took 3.8 GB at scale 0.5 and ran out of memory above
    4.7 GB at scale 1; a 4096² px Landslide4Sense patch at scale 2, and an 8000² px RGB patch
    that training read at scale 0.5, ran out of memory after minutes."""
    channels = len(spec.channels)
    for index in range(len(dataset)) if indexes is None else indexes:
        height, width = dataset.image_size(index)
        need = max(patch_held_bytes(height, width, channels, spec.scale),
                   dataset.read_bytes(index))
        if need > MAX_PATCH_HELD:
            raise SlidemapError(
                f"patch {dataset.names[index]} ({dataset.image_path(index)}) is {width:,} × "
                f"{height:,} px: {'trained on' if training else 'mapped'} whole at scale "
                f"{spec.scale:g} with {channels} channel(s) it would hold about "
                f"{need / 2**30:,.1f} GB at once, more than the {MAX_PATCH_HELD / 2**30:g} GB "
                f"a patch may; {_smaller_patch(dataset, index, channels, training)}")


def _smaller_patch(dataset: PatchDataset | L4SDataset, index: int, channels: int,
                   training: bool) -> str:
    """What maps or trains on an over-size patch: a smaller scale where one fits, cutting it
    into tiles, and, georeferenced, reading it as a scene (windowed, in a memory budget)."""
    height, width = dataset.image_size(index)
    smallest = MIN_TRAIN_TILE / min(height, width)
    path = dataset.image_path(index)
    fits = smallest < 1 and max(patch_held_bytes(height, width, channels, smallest),
                                dataset.read_bytes(index)) <= MAX_PATCH_HELD
    fixes = [f"pass a smaller {'inputs.scale' if training else '--scale'}"] * fits
    if isinstance(dataset, L4SDataset):
        fixes.append("cut its img into patches of a few hundred px (Landslide4Sense patches "
                     "are 128)")
    else:
        fixes.append(f"cut it into tiles (gdal_retile.py -ps 1024 1024 -targetDir DIR {path})")
    if dataset.georeference(index) is not None:
        fixes.append("train on it as a scene (image: and mask: in the config)" if training
                     else f"map it as a scene: slidemap predict {path}")
    return ", or ".join(fixes)
