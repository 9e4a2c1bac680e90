"""Explain one window of a scene: Grad-CAM, attention maps and probability, as PNG and GeoTIFF.

The model sees the window as ``slidemap predict`` feeds it (same bands, decimation and
normalisation, north up), in one pass at scale 1: Grad-CAM needs one forward and backward of one
input, so the explanation is of the network, and where the model's file predicts at several
scales (or blends overlapping windows) its map can differ from this pass; ``explain.json``
records both. PNGs are drawn at the working resolution the model saw, north up; GeoTIFFs are
brought back to the window's stored native pixels so that they lie on the image grid in a GIS,
NaN where it has no data.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from slidemap.data.channels import read_inputs, stack_channels
from slidemap.data.names import DatasetName, local_files
from slidemap.data.normalization import BandStats, normalise
from slidemap.data.scene import Scene
from slidemap.data.windows import flipped, north_up_flips
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.explain.attention import collect_attention
from slidemap.explain.gradcam import Box, eval_mode, grad_cam, prepare_input
from slidemap.explain.overlay import (
    flipped_box,
    picture_aspect,
    rgb_preview,
    save_heat_geotiff,
    save_overlay_png,
)
from slidemap.infer.budget import MemoryBudget
from slidemap.infer.domain import scene_warnings
from slidemap.infer.predict import MIN_WORKING_SIZE, working_factor
from slidemap.infer.stream import check_terrain_halo
from slidemap.io import jsontext
from slidemap.io.atomic import atomic_path, check_outputs, make_output_dir
from slidemap.io.modelfile import ModelBundle, model_paths

log = logging.getLogger(__name__)

MAX_WORKING_SIDE = 2048  # Grad-CAM keeps every activation for the backward pass: bound the window


def explain_window(bundle: ModelBundle, image: DatasetName, out_dir: Path,
                   dem: DatasetName | None = None,
                   window: tuple[int, ...] | None = None, box: tuple[int, ...] | None = None,
                   layer: str | None = None, overwrite: bool = False) -> dict:
    """Write explanation pictures of one window of ``image`` into ``out_dir``.

    ``window`` is ``(col, row, width, height)`` in native pixels (default: one model tile at the
    scene centre); ``box`` is ``(row0, col0, row1, col1)`` in native pixels of the window,
    end-exclusive, and replaces the predicted landslide pixels as the region explained. Both
    count the stored rows and columns, as the GeoTIFFs do (on a grid stored south up, row 0 is
    the south edge); the north-up PNGs outline the box where it lies.
    Returns a summary with the files written.
    """
    spec = bundle.inputs
    with Scene(image, dem=dem, require_crs=False) as scene:
        factor = working_factor(scene, spec, image)
        win = _window(scene, window, bundle.predict.tile * factor, factor)
        check_terrain_halo(scene, spec, factor, (int(win.height), int(win.width)),
                           MemoryBudget(), "--window", memory_option=False)
        for message in scene_warnings(scene, spec, [BandStats(bundle.mean, bundle.std)]):
            warnings.warn(message, SlidemapWarning, stacklevel=2)
        sample = read_inputs(scene, win, spec, factor)
        profile = scene.profile
        pixel_m = scene.pixel_size_m()
        valid = sample["valid"]
        if not valid.any():
            raise SlidemapError(scene.dem_void() or f"window {_describe(win)} of {image} has "
                                "no valid pixel: choose another --window")
    # the network sees the window north up, as predict feeds it (Predictor.facing), and so do
    # the PNGs; the GeoTIFFs are flipped back onto the stored grid
    flips = north_up_flips(profile["transform"])
    x = np.ascontiguousarray(flipped(normalise(stack_channels(sample, spec),
                                               BandStats(bundle.mean, bundle.std), valid=valid),
                                     flips))
    seen = np.ascontiguousarray(flipped(valid, flips))
    model = bundle.model
    working_box = None
    if box is not None:
        working_box = _working_box(box, win, valid.shape)
        region = np.ascontiguousarray(flipped(_box_region(working_box, valid, box), flips))
    else:
        region = (_probability(model, x) > bundle.threshold) & seen
        if not region.any():
            raise SlidemapError(
                f"no valid pixel predicted as landslide in window {_describe(win)} (threshold "
                f"{bundle.threshold}): pass --box row0,col0,row1,col1 to explain a region")
    cam = grad_cam(model, x, layer=layer, region=region, threshold=bundle.threshold)
    attention = collect_attention(model, x)
    heats = {"gradcam": cam.heat, "probability": cam.probability,
             **{f"attention_{_safe(name)}": m for name, m in attention.spatial.items()}}
    georeferenced = profile["crs"] is not None
    files = {f"{name}.png": out_dir / f"{name}.png" for name in heats}
    if georeferenced:
        files.update({f"{name}.tif": out_dir / f"{name}.tif" for name in heats})
    files["explain.json"] = out_dir / "explain.json"
    models = model_paths(bundle.path) if bundle.path is not None else ()
    check_outputs(list(files.values()), [*local_files(image, dem), *models], overwrite)
    make_output_dir(out_dir)

    rgb = rgb_preview(flipped(np.where(valid, sample["image"], np.nan), flips))
    what = f"box {box}" if box is not None else "predicted landslide pixels"
    titles = {"gradcam": f"Grad-CAM of {what}\nlayer {cam.layer}",
              "probability": "landslide probability"}
    grid = {"crs": profile["crs"], "transform": window_transform(win, profile["transform"]),
            "height": int(win.height), "width": int(win.width)}
    native_valid = _to_native(valid.astype(np.float32), win, "nearest") > 0.5
    # the box is given in the window's stored rows and columns, as --window and the GeoTIFFs
    # are: outlined where it lies in the north-up pictures
    outline = flipped_box(working_box, valid.shape, flips) if working_box else None
    # drawn in the ground's shape, not the pixel grid's (degrees, oblong pixels)
    aspect = picture_aspect(pixel_m, (int(win.height), int(win.width)), valid.shape)
    for name, heat in heats.items():  # no colour where the model saw no data (NaN: none)
        save_overlay_png(rgb, np.where(seen, heat, np.nan), files[f"{name}.png"],
                         title=titles.get(name, name), box=outline, aspect=aspect)
        if georeferenced:
            stored = _to_native(flipped(heat, flips), win)
            save_heat_geotiff(np.where(native_valid, stored, np.nan), files[f"{name}.tif"],
                              grid)
    if bundle.predict.scales != (1.0,):
        log.info(f"explain shows the network at scale 1; predict averages scales "
                 f"{list(bundle.predict.scales)}, so its map of this window can differ")
    summary = {
        "image": str(image), "window": [int(win.col_off), int(win.row_off), int(win.width),
                                        int(win.height)],
        "decimation": factor, "box": list(box) if box else None, "layer": cam.layer,
        "region_pixels": int(cam.region.sum()), "threshold": bundle.threshold,
        "scale": 1.0, "predict_scales": list(bundle.predict.scales),
        "mean_probability": float(cam.probability[seen].mean()),
        "channel_attention": {k: v.round(4).tolist() for k, v in attention.channel.items()},
        "files": {k: str(v) for k, v in files.items()},
    }
    earlier = _earlier_files(files["explain.json"])
    with atomic_path(files["explain.json"], overwrite) as tmp:
        tmp.write_text(jsontext.dumps(summary, indent=2) + "\n")
    for stale in earlier - set(files.values()):  # another model's attention maps
        stale.unlink(missing_ok=True)
    return summary


def _earlier_files(record: Path) -> set[Path]:
    """The pictures an earlier explain wrote into the same folder (from its explain.json), so
    that an overwrite leaves no map of another model beside the new ones."""
    try:
        listed = json.loads(record.read_text())["files"].values()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return {Path(p) for p in listed if isinstance(p, str) and Path(p).parent == record.parent
            and Path(p).suffix in (".png", ".tif")}


def _window(scene: Scene, window: tuple[int, ...] | None, size: int, factor: int) -> Window:
    """The user's window checked against the scene, or a ``size`` square at its centre (at
    least the smallest window a model reads; ``working_factor`` found the scene has room)."""
    if window is None:
        side = max(size, MIN_WORKING_SIZE * factor)
        width, height = min(side, scene.width), min(side, scene.height)
        return Window((scene.width - width) // 2, (scene.height - height) // 2, width, height)
    col, row, width, height = window
    if not (col >= 0 and row >= 0 and col + width <= scene.width
            and row + height <= scene.height and width > 0 and height > 0):
        raise SlidemapError(
            f"--window {col},{row},{width},{height} is not inside the {scene.width}×{scene.height}"
            " px image: give col,row,width,height in native pixels")
    if min(width, height) < MIN_WORKING_SIZE * factor:
        raise SlidemapError(f"--window {width}×{height} px is too small for this model: "
                            f"give at least {MIN_WORKING_SIZE * factor} px a side")
    if max(width, height) > MAX_WORKING_SIDE * factor:
        raise SlidemapError(f"--window {width}×{height} px is too large to explain at once: "
                            f"give at most {MAX_WORKING_SIDE * factor} px a side")
    return Window(col, row, width, height)


def _working_box(box: tuple[int, ...], win: Window, shape: tuple[int, int]) -> Box:
    """A native-pixel box of the window on the working grid (covering every pixel it touches)."""
    row0, col0, row1, col1 = box
    if not (0 <= row0 < row1 <= win.height and 0 <= col0 < col1 <= win.width):
        raise SlidemapError(
            f"--box {row0},{col0},{row1},{col1} is empty or outside the {win.width}×{win.height} "
            "px window: give row0,col0,row1,col1 in window pixels, row0 < row1, col0 < col1")
    fy, fx = win.height / shape[0], win.width / shape[1]
    return (int(row0 // fy), int(col0 // fx), max(int(row0 // fy) + 1, int(np.ceil(row1 / fy))),
            max(int(col0 // fx) + 1, int(np.ceil(col1 / fx))))


def _box_region(working_box: Box, valid: np.ndarray, box: tuple[int, ...]) -> np.ndarray:
    """The valid pixels of the box on the working grid: the logits of nodata pixels are in no
    map, so they stay out of the score (a box on nodata alone gave an all-zero Grad-CAM)."""
    row0, col0, row1, col1 = working_box
    region = np.zeros_like(valid)
    region[row0:row1, col0:col1] = valid[row0:row1, col0:col1]
    if not region.any():
        raise SlidemapError(f"--box {','.join(map(str, box))} holds no valid pixel of the image: "
                            "choose a box on ground that has data")
    return region


def _probability(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    """Landslide probability of one normalised ``(C, H, W)`` window, in fp32 like Grad-CAM."""
    batch, (height, width) = prepare_input(model, x)
    with eval_mode(model), torch.no_grad():
        logits = model(batch)[0, 0, :height, :width]
    return torch.sigmoid(logits).cpu().numpy()


def _to_native(heat: np.ndarray, win: Window, mode: str = "bilinear") -> np.ndarray:
    """Upsampling (bilinear, or nearest for a mask) of a working-resolution map to the window's
    native pixels."""
    size = (int(win.height), int(win.width))
    if heat.shape == size:
        return heat
    tensor = torch.from_numpy(np.ascontiguousarray(heat, dtype=np.float32))[None, None]
    if mode == "nearest":
        return F.interpolate(tensor, size=size, mode="nearest")[0, 0].numpy()
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _safe(name: str) -> str:
    """An attention map's name as a file-name part."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name)


def _describe(win: Window) -> str:
    return f"{int(win.col_off)},{int(win.row_off)},{int(win.width)},{int(win.height)}"

