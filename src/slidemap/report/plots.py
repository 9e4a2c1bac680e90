"""Figures of training runs, evaluations and inventories, drawn with matplotlib's Figure API.

No pyplot: figures are built on the Agg canvas directly, so plotting works headless and leaves no
global state behind in a long-running process (training, a notebook, the test suite).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import AutoLocator, FuncFormatter, MaxNLocator
from rasterio.windows import Window

from slidemap.data.names import DatasetName, display_name
from slidemap.data.scene import IGNORE, Scene
from slidemap.data.windows import flipped, north_up_flips
from slidemap.errors import silenced
from slidemap.evaluation.metrics import AUC_BINS, BinaryConfusion
from slidemap.explain.overlay import picture_aspect, rgb_preview
from slidemap.io.atomic import atomic_path
from slidemap.io.styles import PROB_COLOURS

PREVIEW_SIDE = 1500
VAL_METRICS = ("val_f1", "val_iou", "val_precision", "val_recall", "val_auc")
WEIGHTS = "weights"  # history.csv's column that marks the row of averaged weights
# told apart with any colour vision, from each other (green and red were one olive to a
# deuteranope) and from the grey of the true negatives and of bare rock (a bluish green was that
# grey to a deuteranope): blue and yellow, the axis every dichromat sees, and a dark red
ERROR_COLOURS = {"true positive": (0, 90, 255), "false positive": (200, 0, 0),
                 "false negative": (255, 230, 0)}
GREY = 128


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: Path) -> Path:
    """Write ``figure`` as a PNG atomically (no half-written picture under the real name)."""
    with atomic_path(path) as tmp:
        _draw(figure, tmp, format="png")
    return path


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    _draw(figure, buffer, format="png")
    return buffer.getvalue()


def jpeg_bytes(figure: Figure, quality: int = 90) -> bytes:
    """A figure over photographic imagery as JPEG: a fifth of the PNG's size, text still crisp
    at this quality."""
    buffer = io.BytesIO()
    _draw(figure, buffer, format="jpeg", pil_kwargs={"quality": quality, "subsampling": 0})
    return buffer.getvalue()


def _draw(figure: Figure, target: Path | io.BytesIO, **options: Any) -> None:
    """Save ``figure``. A file name in a title in characters the font lacks (a scene named in
    CJK) is drawn with boxes for them, without matplotlib's warning and its source line on
    stderr for each: the page's text gives the name whole."""
    with silenced(UserWarning, "Glyph .* missing from font"):
        figure.savefig(target, **options)


def read_history(path: Path) -> dict[str, np.ndarray]:
    """``history.csv`` as one float array per column (NaN where a cell is empty), the
    ``weights`` column (``epoch``, or ``averaged`` on the row of a run's averaged weights) as
    text."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(rows[0]) if rows else []
    return {c: np.array([row.get(c) or "" for row in rows]) if c == WEIGHTS
            else np.array([_float(row.get(c)) for row in rows]) for c in columns}


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def curves_figure(history: dict[str, np.ndarray], kept: int | None = None) -> Figure:
    """Training loss, and the validation metrics when there are any, per epoch, with the
    ``kept`` epoch marked (the model file's: with ``select: last`` or weight averaging it is
    not the best F1's), else the best F1's."""
    epochs = history.get("epoch", np.arange(1, len(history.get("train_loss", [])) + 1))
    averaged = history.get(WEIGHTS, np.zeros(len(epochs), str)) == "averaged"
    metrics = [m for m in VAL_METRICS if m in history and np.isfinite(history[m]).any()]
    figure = new_figure(12 if metrics else 6, 4)
    axes = figure.subplots(1, 2 if metrics else 1, squeeze=False)[0]
    losses = history.get("train_loss", np.full(len(epochs), np.nan))
    axes[0].plot(epochs[~averaged], losses[~averaged], "o-", color="tab:blue", markersize=3)
    axes[0].set(title="training loss", xlabel="epoch", ylabel="loss")
    if metrics:
        for number, name in enumerate(metrics):
            line, = axes[1].plot(epochs[~averaged], history[name][~averaged], "o-",
                                 markersize=3, label=name[4:])
            # the averaged weights (the model file's), beside the last epoch's own
            axes[1].plot(epochs[averaged], history[name][averaged], "*", markersize=10,
                         color=line.get_color(), label="averaged weights (★)"
                         if number == 0 and averaged.any() else None)
        if kept is not None:
            axes[1].axvline(kept, color="black", linestyle="--", linewidth=1,
                            label=f"kept model, epoch {kept}")
        elif "val_f1" in metrics:
            best = int(np.nanargmax(history["val_f1"]))
            axes[1].axvline(epochs[best], color="grey", linestyle="--", linewidth=1,
                            label=f"best F1, epoch {epochs[best]:.0f}")
        # a margin: scores of exactly 0 or 1 are drawn inside the frame, not half hidden on it
        axes[1].set(title="validation (landslide class)", xlabel="epoch", ylabel="score",
                    ylim=(-0.02, 1.02))
        axes[1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.25
    return figure


def kept_epoch(run_dir: Path) -> int | None:
    """The epoch of the run's model file, from ``summary.json`` (None while it trains)."""
    path = run_dir / "summary.json"
    try:
        epoch = json.loads(path.read_text()).get("best_epoch") if path.exists() else None
    except (OSError, ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) and epoch > 0 else None


def plot_training_curves(run_dir: Path) -> Path | None:
    """Draw ``run_dir/history.csv`` into ``run_dir/curves.png``; None when there is no history."""
    history = run_dir / "history.csv"
    if not history.exists():
        return None
    return save_png(curves_figure(read_history(history), kept_epoch(run_dir)),
                    run_dir / "curves.png")


def precision_recall(confusion: BinaryConfusion) -> tuple[np.ndarray, np.ndarray, float]:
    """Precision and recall at every histogram bin edge (high to low), and average precision."""
    tp = np.cumsum(confusion.pos_hist[::-1]).astype(np.float64)
    fp = np.cumsum(confusion.neg_hist[::-1]).astype(np.float64)
    positives = tp[-1] if tp.size else 0.0
    keep = (tp + fp) > 0
    if positives == 0 or not keep.any():
        return np.zeros(0), np.zeros(0), math.nan
    precision = tp[keep] / (tp[keep] + fp[keep])
    recall = tp[keep] / positives
    average = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    return precision, recall, average


def pr_curve_figure(confusion: BinaryConfusion) -> Figure:
    """Precision–recall curve over all thresholds, with the threshold in use marked."""
    precision, recall, average = precision_recall(confusion)
    metrics = confusion.metrics()
    figure = new_figure(5.5, 4.5)
    ax = figure.add_subplot()
    if precision.size:
        ax.plot(recall, precision, color="tab:blue", label=f"AP {average:.3f}")
        base = confusion.pos_hist.sum() / max(1, confusion.pos_hist.sum()
                                              + confusion.neg_hist.sum())
        ax.axhline(base, color="grey", linestyle=":", linewidth=1, label=f"chance {base:.3f}")
        ax.plot(metrics["recall"], metrics["precision"], "o", color="tab:red", markersize=8,
                label=f"threshold {confusion.threshold:g} (F1 {metrics['f1']:.3f})")
        # below the axes: a weak model's curve runs where a legend inside would cover it
        figure.legend(loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    else:
        ax.text(0.5, 0.5, "no landslide pixel in the truth:\nno precision–recall curve",
                ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02),
           title=f"precision–recall ({AUC_BINS} probability bins)")
    ax.grid(alpha=0.3)
    return figure


def _preview_factor(height: int, width: int, max_side: int) -> int:
    return max(1, math.ceil(max(height, width) / max_side))


def error_map(prediction: DatasetName, truth: DatasetName, threshold: float,
              image: DatasetName | None = None,
              max_side: int = PREVIEW_SIDE, aoi: Path | None = None) -> np.ndarray:
    """An RGB ``(h, w, 3)`` preview: TP, FP and FN coloured over the image (else grey), north
    up and east right whichever way the grid's rows and columns run.

    Rasters are read decimated (``out_shape``) so that the preview is at most ``max_side`` pixels
    a side whatever the scene size; probabilities are averaged before thresholding.
    """
    with Scene(prediction, mask=truth, require_crs=False, apply_scale=True, aoi=aoi) as scene:
        size = (scene.height, scene.width)
        factor = _preview_factor(*size, max_side)
        sample = scene.read(Window(0, 0, scene.width, scene.height), (1,), factor)
        flips = north_up_flips(scene.profile["transform"])
    prob, labels, valid = (flipped(sample[k], flips) for k in ("image", "mask", "valid"))
    prob = prob[0]
    background = np.full((*valid.shape, 3), GREY, dtype=np.uint8)
    if image is not None:
        with Scene(image, require_crs=False) as scene:
            if (scene.height, scene.width) == size:
                bands = tuple(range(1, min(3, scene.band_count) + 1))
                picture = scene.read(Window(0, 0, scene.width, scene.height), bands, factor)
                background = rgb_preview(flipped(
                    np.where(picture["valid"], picture["image"], np.nan), flips))
    scored = valid & (labels != IGNORE) & np.isfinite(prob)
    predicted = scored & (prob >= threshold)
    truth_on = scored & (labels == 1)
    out = background.astype(np.float32)
    out[~scored] *= 0.5
    for name, where in (("true positive", predicted & truth_on),
                        ("false positive", predicted & ~truth_on),
                        ("false negative", ~predicted & truth_on)):
        out[where] = 0.35 * out[where] + 0.65 * np.array(ERROR_COLOURS[name], np.float32)
    return np.round(out).astype(np.uint8)


def preview_aspect(raster: DatasetName, shape: tuple[int, int]) -> float:
    """A pixel's drawn height over its width in a ``shape`` preview of ``raster``, so that the
    preview keeps the ground's shape (:func:`picture_aspect`)."""
    with Scene(raster, require_crs=False) as scene:
        return picture_aspect(scene.pixel_size_m(), (scene.height, scene.width), shape)


def errors_figure(errors: np.ndarray, title: str = "", aspect: float = 1.0) -> Figure:
    """The error map at (about) one screen pixel per preview pixel, each ``aspect`` times
    taller than wide (:func:`preview_aspect`), with a legend below."""
    height, width = errors.shape[:2]
    longest = max(height * aspect, width)
    scale = max(500, min(longest, PREVIEW_SIDE)) / longest
    figure = new_figure(max(width * scale / 100, 5), height * aspect * scale / 100 + 1.1)
    ax = figure.add_subplot()
    ax.imshow(errors, interpolation="nearest", aspect=aspect)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize="medium")
    handles = [Patch(color=(r / 255, g / 255, b / 255), label=n)
               for n, (r, g, b) in ERROR_COLOURS.items()]
    handles.append(Patch(color=(0.25, 0.25, 0.25), label="not scored (darkened)"))
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small",
                  frameon=False)
    return figure


def size_histogram_figure(areas: np.ndarray, pixel_area_m2: float | None = None) -> Figure:
    """How many landslides of each size, and what share of the mapped area each size holds.

    Bins are logarithmic (three a decade), so the one-pixel specks that any threshold leaves at
    a scene's edges take one bar on the left instead of squeezing every real slide into one;
    the area line shows how little they weigh.
    """
    figure = new_figure(6.2, 4.4)
    ax = figure.add_subplot()
    areas = areas[np.isfinite(areas) & (areas > 0)]
    if areas.size:
        low = math.floor(3 * math.log10(areas.min()))
        high = max(low + 1, math.ceil(3 * math.log10(areas.max()) + 1e-9))
        edges = 10.0 ** (np.arange(low, high + 1) / 3)
        counts, _ = np.histogram(areas, edges)
        summed, _ = np.histogram(areas, edges, weights=areas)
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:orange",
               edgecolor="white", label="landslides (left axis)")
        share = ax.twinx()
        share.bar(edges[:-1], 100 * summed / summed.sum(), width=np.diff(edges), align="edge",
                  fill=False, edgecolor="tab:blue", linewidth=1.6,
                  label="share of total area (right axis)")
        share.set(ylabel="share of total area (%)", ylim=(0, 105))
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v >= 1
                                                   else f"{v:g}"))
        if pixel_area_m2:
            ax.axvline(pixel_area_m2, color="grey", linestyle=":", linewidth=1.2,
                       label=f"one raster pixel ({pixel_area_m2:.2g} m²)")
        lines = [*ax.get_legend_handles_labels()[0], *share.get_legend_handles_labels()[0]]
        figure.legend(handles=lines, fontsize="small", loc="outside lower center", ncols=2,
                      frameon=False)
        ax.set_ylim(0, max(counts.max() * 1.1, 1))
        whole_counts = AutoLocator()  # the default y locator, on whole numbers only
        whole_counts.set_params(integer=True)
        ax.yaxis.set_major_locator(whole_counts)
    else:
        ax.text(0.5, 0.5, "no landslide mapped", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_xticks([])  # not "0.2 landslides" of 0-1 m² on empty axes
        ax.set_yticks([])
    ax.set(xlabel="landslide area (m², logarithmic bins)", ylabel="landslides",
           title=f"landslide sizes ({areas.size:,} landslide{'s' * (areas.size != 1)})")
    ax.grid(alpha=0.3)
    return figure


def probability_figure(prob_path: Path, max_side: int = PREVIEW_SIDE) -> Figure:
    """A decimated preview of a probability raster (nodata left blank), north up as the
    report's map beside it."""
    with Scene(prob_path, require_crs=False, apply_scale=True) as scene:
        factor = _preview_factor(scene.height, scene.width, max_side)
        sample = scene.read(Window(0, 0, scene.width, scene.height), (1,), factor)
        flips = north_up_flips(scene.profile["transform"])
        # drawn in the ground's shape, not the pixel grid's (degrees, oblong pixels)
        aspect = picture_aspect(scene.pixel_size_m(), (scene.height, scene.width),
                                sample["valid"].shape)
    prob = flipped(np.where(sample["valid"], sample["image"][0], np.nan), flips)
    height, width = prob.shape
    figure = new_figure(6.2, min(9.0, max(3.0, 5.2 * height * aspect / width + 0.6)))
    ax = figure.add_subplot()
    shown = ax.imshow(prob, cmap=PROB_COLOURS, vmin=0, vmax=1, interpolation="nearest",
                      aspect=aspect)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"landslide probability — {prob_path.name}", fontsize="medium")
    figure.colorbar(shown, ax=ax, shrink=0.8)
    return figure


EVALUATION_PLOTS = ("pr_curve.png", "errors_overlay.png")


def write_evaluation_plots(out_dir: Path, confusion: BinaryConfusion, prediction: DatasetName,
                           truth: DatasetName, image: DatasetName | None = None,
                           aoi: Path | None = None) -> dict[str, Path]:
    """``pr_curve.png`` and ``errors_overlay.png`` of one evaluation, in ``out_dir``."""
    errors = error_map(prediction, truth, confusion.threshold, image, aoi=aoi)
    title = f"errors at threshold {confusion.threshold:g} vs {display_name(truth)}"
    curve, overlay = (out_dir / name for name in EVALUATION_PLOTS)
    aspect = preview_aspect(prediction, errors.shape[:2])
    return {"pr_curve": save_png(pr_curve_figure(confusion), curve),
            "errors_overlay": save_png(errors_figure(errors, title, aspect), overlay)}
