"""What a model file learnt from: the scene images and patch sets of the run that trained it and
of the runs it started from (``init``), as its sidecar's ``provenance.config`` records them, and
those whose labels chose its kept epoch (``data.val`` with ``training.select: best``).
Cross-validation asks it, so that no block is scored by a model that saw it, and fine-tuning, so
that its 'before' and 'after' are not figures on ground or patches the starting model learnt."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rasterio.crs import CRS

from slidemap.data.names import DatasetName, absolute_name, is_local, local_files, local_path
from slidemap.data.scene import open_raster
from slidemap.data.sources import common_patches
from slidemap.data.terrain import bounds_in
from slidemap.errors import SlidemapError
from slidemap.io.modelfile import sidecar_record
from slidemap.schema.config import InputSpec, PatchSource, parse_config

INIT_DEPTH = 8  # how many starting models back (an init's own init) the record is followed
Ground = tuple[CRS, tuple[float, ...]]  # a raster's CRS and its bounds in it


@dataclass
class Lineage:
    """Scene images a model trained on, those its epoch was selected on, and what its files
    leave unknown of the scenes' ground (in words); the same of patch sets (as recorded)."""

    images: list[str] = field(default_factory=list)
    selected_on: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    patch_sets: list[dict] = field(default_factory=list)
    patches_selected_on: list[dict] = field(default_factory=list)
    patches_unknown: list[str] = field(default_factory=list)


def lineage(model: Path) -> Lineage:
    """The scene images ``model`` and the models it started from trained on, self-training
    targets and the scene a ``predict --adapt`` copy adapted to included (their imagery is
    read; ``selftrain`` records its targets with each round, ``--adapt-save`` the scene)."""
    found = Lineage()
    for _ in range(INIT_DEPTH):
        provenance = recorded_provenance(model)
        config = provenance.get("config") if provenance else None
        if not isinstance(config, dict) or "train" not in config:
            found.unknown.append(f"model file {model} records no training run")
            found.patches_unknown.append(found.unknown[-1])
            break
        targets = provenance.get("selftrain_targets") if provenance else None
        adapted = provenance.get("adapted") if provenance else None
        scene = [adapted] if isinstance(adapted, dict) and "image" in adapted else []
        for item in [*_entries(config.get("train")), *_entries(targets), *scene]:
            if isinstance(item.get("image"), str):
                found.images.append(item["image"])
            else:
                found.unknown.append(f"it trained on the patch set {item}")
                found.patch_sets.append(item)
        if _selects_best(config):  # the val scenes' labels chose the epoch the file keeps
            for item in _entries(config.get("val")):
                if isinstance(item.get("image"), str):
                    found.selected_on.append(item["image"])
                else:
                    found.unknown.append(f"its epoch was selected on the patch set {item}")
                    found.patches_selected_on.append(item)
        start = config.get("init")
        if not isinstance(start, str):
            break
        model = Path(start)
    return found


def learnt_ground(found: Lineage, scenes: Sequence[DatasetName], noun: str = "scene"
                  ) -> str | None:
    """How a model of lineage ``found`` learnt the ground of one of ``scenes`` ("was trained on
    scene X", "kept the epoch chosen by validation (data.val) on Y, on the ground of scene X"),
    or None where it learnt none of it. An image on a scene's ground (another file, crop or CRS
    of it) counts as that scene, where both are local rasters with a CRS. What cannot be
    compared (a file missing here, unreadable or without a CRS) is added to ``found.unknown``."""
    grounds = [(image, image_ground(image)) for image in scenes]
    learnt = [*((seen, "was trained on") for seen in found.images),
              *((seen, "kept the epoch chosen by validation (data.val) on")
                for seen in found.selected_on)]
    for seen, how in learnt:
        ground = _recorded_ground(seen, found.unknown)
        for image, scene_ground in grounds:
            if same_image(seen, image):
                return f"{how} {noun} {image}"
            if ground and scene_ground and grounds_overlap(ground, scene_ground):
                return f"{how} {seen}, on the ground of {noun} {image}"
    missing = [seen for seen in local_files(*found.images, *found.selected_on)
               if not seen.exists()]
    if missing:
        found.unknown.append(f"{len(missing)} of the images it learnt from are not found from "
                             f"here (e.g. {missing[0]})")
    return None


def learnt_patches(found: Lineage, sets: Sequence[PatchSource], spec: InputSpec,
                   noun: str = "patch set") -> str | None:
    """How a model of lineage ``found`` learnt patches of one of ``sets`` ("was trained on 4
    patch(es) of patch set X, e.g. 10338"), or None where it learnt none of them: patches of
    one folder that both select, as training compares its own data. Patches carry no ground
    to compare with scenes. A recorded set not found or not readable here is added to
    ``found.patches_unknown``."""
    learnt = [*((item, "was trained on") for item in found.patch_sets),
              *((item, "kept the epoch chosen by validation (data.val) on")
                for item in found.patches_selected_on)]
    for item, how in learnt:
        recorded = _recorded_set(item, found.patches_unknown)
        if recorded is None:
            continue
        for checked in sets:
            try:
                both = common_patches(checked, recorded, spec)
            except SlidemapError as error:  # the set changed since: a name gone, fewer patches
                found.patches_unknown.append(str(error))
                continue
            if both:
                return f"{how} {len(both)} patch(es) of {noun} {checked.root}, e.g. {both[0]}"
    return None


def _recorded_set(item: dict, unknown: list[str]) -> PatchSource | None:
    """A patch set a model learnt from, as its record names it, where its folder is found
    here; why not is added to ``unknown``."""
    try:
        source = parse_config({"data": {"train": [item]}},
                              where=f"its record of the patch set {item}").train_patches[0]
    except SlidemapError as error:
        unknown.append(str(error))
        return None
    if not source.root.exists():
        unknown.append(f"the patch set {source.root} it learnt from is not found from here")
        return None
    return source


def image_ground(image: DatasetName) -> Ground | None:
    """A raster's CRS and (west, south, east, north) in it; None without a CRS."""
    with open_raster(image, "image") as dataset:
        return (dataset.crs, tuple(dataset.bounds)) if dataset.crs else None


def grounds_overlap(one: Ground, other: Ground) -> bool:
    """Whether two footprints share ground (more than an edge), compared in ``other``'s CRS;
    False where PROJ knows no operation between the CRSs (a local, engineering CRS and any
    other): such rasters cannot lie on one map."""
    moved = bounds_in(one[0], other[0], one[1])
    if moved is None:
        return False
    west, south, east, north = moved
    other_west, other_south, other_east, other_north = other[1]
    return (min(east, other_east) > max(west, other_west)
            and min(north, other_north) > max(south, other_south))


def _recorded_ground(image: str, unknown: list[str]) -> Ground | None:
    """The ground of an image an init learnt from, where it is a local file here (a missing
    one is counted apart); why it cannot be compared is added to ``unknown``."""
    path = local_path(image)
    if path is None or not path.exists():
        return None
    try:
        ground = image_ground(image)
    except SlidemapError as error:
        unknown.append(str(error))
        return None
    if ground is None:
        unknown.append(f"{image} has no CRS, so its ground cannot be compared")
    return ground


def recorded_provenance(model: Path) -> dict | None:
    """A model sidecar's ``provenance`` (the run config that trained it under ``config``), or
    None where the sidecar or the record is missing or unreadable."""
    provenance = sidecar_record(model).get("provenance")
    return provenance if isinstance(provenance, dict) else None


def _selects_best(config: dict) -> bool:
    """Whether a recorded run kept its best epoch by validation (``select: best``, the
    default, also where the record predates the setting)."""
    training = config.get("training")
    return not isinstance(training, dict) or training.get("select", "best") == "best"


def same_image(recorded: str, other: DatasetName) -> bool:
    """Two local files: the same file; else the same GDAL name (``/vsizip/...``, a URL), a
    relative archive taken from the current folder: ``Path`` would fold a name's ``//``."""
    if is_local(recorded) and is_local(other):
        return _same_file(Path(recorded), Path(other))
    return absolute_name(recorded) == absolute_name(other)


def _same_file(recorded: Path, other: Path) -> bool:
    try:
        return recorded.resolve() == other.resolve() or os.path.samefile(recorded, other)
    except (OSError, RuntimeError):
        return False


def _entries(value: object) -> list[dict]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
