"""What to label next: the boxes of a scene where the model is least sure, spread over the scene.

The scene is cut into non-overlapping boxes (``box`` image pixels a side; boxes at the right and
bottom edges are clipped). Each box is predicted on its own, in the model's windows by the engine
that predicts arrays (``slidemap.infer.patches.predict_arrays``), and scored at once, so memory
holds one box's channels and probabilities, one batch of windows and a few numbers per box,
whatever the scene size:

- *uncertainty*: the mean binary entropy (bits, 0 sure … 1 a coin toss) of the model's
  probabilities over the box's valid pixels;
- *score*: uncertainty × the box's valid fraction, the uncertainty a labeller resolves per box
  (a half-empty box at the scene edge teaches half as much).

Boxes that overlap the polygons of ``labels`` (the areas labelled before, e.g. the boxes of an
earlier round, or an AOI) by more than a pixel's area are not predicted at all. The picks are
greedy by score with a diversity rule: no pick lies within ``spacing`` boxes (8-neighbourhood
rings) of an earlier pick, so ten picks are not ten neighbours on one slope; if the rule leaves
fewer than ``n`` boxes, the best remaining ones fill up the list.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyogrio.raw
import shapely
from pyogrio.errors import DataLayerError, DataSourceError
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from rich.progress import Progress

from slidemap.data.channels import read_inputs, stack_channels
from slidemap.data.names import DatasetName
from slidemap.data.scene import Scene
from slidemap.data.vectors import PolygonLayer
from slidemap.errors import SlidemapError, first_line
from slidemap.infer.budget import MemoryBudget
from slidemap.infer.ensemble import Predictor
from slidemap.infer.options import PredictOptions
from slidemap.infer.patches import predict_arrays
from slidemap.infer.predict import MIN_WORKING_SIZE, working_factor
from slidemap.infer.stream import HALO_BYTES_PER_PIXEL, check_terrain_halo
from slidemap.io.atomic import atomic_path, final_path
from slidemap.schema.config import InputSpec

MIN_VALID = 0.25  # a box must have this share of its full area valid to be worth labelling
GEOJSON_SUFFIXES = (".geojson", ".json")
BOX_SUFFIXES = (".gpkg", *GEOJSON_SUFFIXES)  # the files write_boxes writes
EPS = 1e-6
BYTES_PER_BOX_SCORE = 512  # a BoxScore and its Window (250 measured), kept until the pick
# bytes per working px of the box being scored, held whole: its channels read and stacked (8 per
# channel) and, while it is scored, the blended probabilities and their weights, the valid ones
# and their float64 entropy's temporaries (44 measured); a read of terrain descriptors peaks at
# HALO_BYTES_PER_PIXEL (134 measured for slope alone)
BYTES_PER_CHANNEL = 8
SCORE_BYTES_PER_PIXEL = 48


@dataclass(frozen=True)
class BoxScore:
    """One candidate box, its place in the box grid and the model's uncertainty there."""

    window: Window
    grid_row: int
    grid_col: int
    uncertainty: float
    valid_fraction: float
    predicted_fraction: float  # share of valid pixels at or above the model's threshold

    @property
    def score(self) -> float:
        return self.uncertainty * self.valid_fraction


def box_grid(height: int, width: int, box: int, flips: tuple[bool, bool] = (False, False)
             ) -> Iterator[tuple[int, int, Window]]:
    """(grid row, grid col, window) of non-overlapping ``box`` px boxes, edge boxes clipped,
    one at a time: a list of them grew with the scene (gigabytes for 64 px boxes of a
    1 000 000² px VRT). Laid from the north-west corner (``flips``: ``Scene.flips``), as
    predict's windows are: a scene stored south up or east to west gets the boxes of the same
    ground, the clipped ones along its south and east edges, as stored north up."""
    for r, (row, rows) in enumerate(_box_spans(height, box, flips[0])):
        for c, (col, cols) in enumerate(_box_spans(width, box, flips[1])):
            yield r, c, Window(col, row, cols, rows)


def _box_spans(length: int, box: int, from_end: bool) -> Iterator[tuple[int, int]]:
    """(offset, size) of the boxes along one axis in increasing order, laid from its start or,
    ``from_end``, from its end (the clipped box then comes first)."""
    if not from_end:
        return ((start, min(box, length - start)) for start in range(0, length, box))
    ends = range(length - (length - 1) // box * box, length + 1, box)
    return ((max(0, end - box), end - max(0, end - box)) for end in ends)


def box_count(height: int, width: int, box: int) -> int:
    """How many boxes :func:`box_grid` makes, without making them."""
    return -(-height // box) * -(-width // box)


def box_bytes(rows: int, cols: int, spec: InputSpec) -> int:
    """The most one box of ``rows`` × ``cols`` working px takes while it is read and scored:
    its arrays are whole, the network sees the model's windows only."""
    held = BYTES_PER_CHANNEL * len(spec.channels)
    terrain = spec.slope or spec.relief_m or spec.curvature or spec.roughness_m
    return rows * cols * max(held + SCORE_BYTES_PER_PIXEL, HALO_BYTES_PER_PIXEL if terrain else 0)


def check_box_size(scene: Scene, image: DatasetName, box: int, factor: int, spec: InputSpec,
                   budget: MemoryBudget) -> None:
    """Refuse, before anything is read, a scene of so many boxes that their scores, kept until
    the pick, would not fit half ``budget`` (a list of 244 million boxes ran out of memory),
    and a ``box`` whose own arrays (:func:`box_bytes`) would not fit the rest (an 8192 px box
    took gigabytes)."""
    boxes = box_count(scene.height, scene.width, box)
    scores = boxes * BYTES_PER_BOX_SCORE
    if scores > budget.share(0.5):
        raise SlidemapError(
            f"image {image} is {scene.width} × {scene.height} px, {boxes:,} boxes of {box} px: "
            f"their scores would take about {scores / 2**20:,.0f} MB of the {budget.megabytes} "
            "MB memory budget; pass a larger --box, or a window of the scene (gdal_translate "
            "-srcwin)")
    rows, cols = -(-min(box, scene.height) // factor), -(-min(box, scene.width) // factor)
    need = box_bytes(rows, cols, spec)
    if need > budget.bytes - scores:
        raise SlidemapError(f"--box {box} holds {rows} × {cols} working px for this model on "
                            f"{image}: its channels and probabilities would take about "
                            f"{need / 2**20:,.0f} MB of the {budget.megabytes} MB memory budget; "
                            "pass a smaller --box, or a larger --memory-mb")


def binary_entropy(prob: np.ndarray) -> np.ndarray:
    """Entropy in bits of a Bernoulli variable with probability ``prob``."""
    p = np.clip(prob.astype(np.float64), EPS, 1 - EPS)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def overlaps_labels(layers: Sequence[PolygonLayer], bounds: tuple[float, ...],
                    pixel_area: float) -> bool:
    """Whether the polygons of a layer of ``layers`` cover more than ``pixel_area`` (a pixel's
    area) of ``bounds``: less labels no pixel of the box. Touching edges do not count, nor do
    the slivers of float error that an edge shared with the box becomes when the earlier boxes
    were saved in another CRS (QGIS, a WGS 84 GeoJSON): else the neighbours of every labelled
    box would be skipped too. The same measure and threshold as newsite's label check."""
    left, bottom, right, top = bounds
    box = shapely.box(left, bottom, right, top)
    return any(layer.area_within(box) > pixel_area for layer in layers)


def valid_fraction(valid: np.ndarray, window: Window, box: int) -> float:
    """The valid share of a full ``box`` px box: the window's valid share times the window's
    share of the box. Not the working pixels' count times the factor squared: a box that the
    factor does not divide is read as rounded working pixels, which would give up to several
    per cent more or less (above 1 for a fully valid box)."""
    return float(valid.mean()) * window.width * window.height / box**2


def score_box(predictor: Predictor, scene: Scene, place: tuple[int, int, Window], box: int,
              factor: int, options: PredictOptions) -> BoxScore | None:
    """The score of one box, from the probabilities of the model's windows (``options``' or
    the model's own) blended as predict blends them: a box larger than a window went through
    the network whole. None for a box under :data:`MIN_VALID`. Its arrays go at the return,
    before the next box is read."""
    r, c, window = place  # in the box grid, and in image px
    sample = read_inputs(scene, window, predictor.spec, factor)
    valid = sample["valid"]
    if valid_fraction(valid, window, box) < MIN_VALID:
        return None
    prob = predict_arrays(predictor, stack_channels(sample, predictor.spec), valid,
                          options)[valid]
    return BoxScore(window, r, c, float(binary_entropy(prob).mean()),
                    valid_fraction(valid, window, box),
                    float((prob >= predictor.threshold).mean()))


def score_boxes(predictor: Predictor, scene: Scene, box: int, factor: int,
                options: PredictOptions, skip: Sequence[PolygonLayer] = (),
                progress: Progress | None = None) -> tuple[list[BoxScore], int, int]:
    """Scores of every box with enough valid pixels, how many boxes ``skip`` ruled out and
    how many were left out as valid under :data:`MIN_VALID` (which a smaller box may pass)."""
    grid = box_grid(scene.height, scene.width, box, scene.flips)
    transform = scene.profile["transform"]
    total = box_count(scene.height, scene.width, box)
    task = progress.add_task("score boxes", total=total) if progress else None
    scores: list[BoxScore] = []
    skipped = sparse = 0
    for r, c, window in grid:
        if progress is not None and task is not None:
            progress.advance(task)
        if skip and overlaps_labels(skip, window_bounds(window, transform),
                                    abs(transform.determinant)):
            skipped += 1
            continue
        if not scene.any_valid(window, factor):
            continue
        scored = score_box(predictor, scene, (r, c, window), box, factor, options)
        if scored is None:
            sparse += 1
        else:
            scores.append(scored)
    return scores, skipped, sparse


def pick(scores: Sequence[BoxScore], n: int, spacing: int) -> list[BoxScore]:
    """Up to ``n`` boxes, greedy by score, none within ``spacing`` boxes of an earlier pick
    while such boxes remain; then the best of the rest."""
    ranked = sorted(scores, key=lambda s: (-s.score, s.grid_row, s.grid_col))
    picks: list[BoxScore] = []
    for candidate in ranked:
        if len(picks) == n:
            break
        if all(max(abs(candidate.grid_row - p.grid_row), abs(candidate.grid_col - p.grid_col))
               > spacing for p in picks):
            picks.append(candidate)
    chosen = {id(p) for p in picks}
    picks += [s for s in ranked if id(s) not in chosen][:n - len(picks)]
    return picks


@dataclass
class Suggestion:
    """The picks, how many boxes were scored and skipped, and the scene's georeference."""

    picks: list[BoxScore]
    candidates: int
    skipped_labelled: int
    profile: dict


def suggest_boxes(predictor: Predictor, image: DatasetName, dem: DatasetName | None, n: int,
                  box: int, labels: Sequence[Path] = (), spacing: int = 1,
                  options: PredictOptions | None = None, progress: Progress | None = None
                  ) -> Suggestion:
    """The ``n`` boxes most worth labelling next, predicted with ``options`` (default: the
    model's windows, one per model call), whose memory budget bounds one box's arrays and DEM
    halo and the boxes' scores."""
    spec = predictor.spec
    options = options or PredictOptions()
    budget = MemoryBudget.of(options.memory_mb)
    with Scene(image, dem=dem) as scene:
        factor = working_factor(scene, spec, image)
        if box < MIN_WORKING_SIZE * factor:
            raise SlidemapError(f"--box {box} is too small for this model on {image}: it reads "
                                f"{factor} image px per working px, so use at least "
                                f"{MIN_WORKING_SIZE * factor}")
        check_box_size(scene, image, box, factor, spec, budget)
        check_terrain_halo(scene, spec, factor, (box, box), budget, "--box", memory_option=False)
        profile = scene.profile
        skip = [PolygonLayer(path, "labelled areas", profile["crs"]) for path in labels]
        for layer in skip:
            if not layer.features:
                raise SlidemapError(f"labelled areas {layer.name} holds no polygon: pass the "
                                    "boxes or areas labelled so far, or leave out --labels")
            layer.check_overlap(scene.bounds)
        scores, skipped, sparse = score_boxes(predictor.facing(scene.flips), scene, box,
                                              factor, options, skip, progress)
    if not scores and skipped and not sparse:  # a smaller --box would find nothing either
        raise SlidemapError(f"every box of {image} with valid pixels lies in the areas of "
                            f"--labels ({skipped} boxes): nothing is left to suggest there")
    if not scores:
        raise SlidemapError(f"no box of {box} px of {image} is left to suggest ({skipped} "
                            f"already labelled, the rest less than {MIN_VALID:.0%} valid): use a "
                            "smaller --box")
    return Suggestion(pick(scores, n, spacing), len(scores), skipped, profile)


def write_boxes(suggestion: Suggestion, path: Path, overwrite: bool = False) -> None:
    """The picks as ranked polygons in the scene's CRS (GeoPackage, or GeoJSON by suffix)."""
    picks = suggestion.picks
    transform, crs = suggestion.profile["transform"], suggestion.profile["crs"]
    driver = "GeoJSON" if path.suffix.lower() in GEOJSON_SUFFIXES else "GPKG"
    geometry = np.array([shapely.to_wkb(shapely.box(*window_bounds(p.window, transform)))
                         for p in picks], dtype=object)
    fields = {
        "rank": np.arange(1, len(picks) + 1, dtype=np.int32),
        "score": np.array([p.score for p in picks]),
        "uncertainty": np.array([p.uncertainty for p in picks]),
        "valid_fraction": np.array([p.valid_fraction for p in picks]),
        "predicted_fraction": np.array([p.predicted_fraction for p in picks]),
        "col_off": np.array([p.window.col_off for p in picks], dtype=np.int32),
        "row_off": np.array([p.window.row_off for p in picks], dtype=np.int32),
    }
    try:
        with atomic_path(path, overwrite) as tmp:
            pyogrio.raw.write(tmp, geometry, list(fields.values()), list(fields), driver=driver,
                              geometry_type="Polygon", crs=crs.to_wkt() if crs else None,
                              layer="suggested_boxes")
    except (OSError, DataSourceError, DataLayerError) as exc:
        target = final_path(path)
        raise SlidemapError(f"cannot write {target} ({first_line(exc)}): check free disk "
                            f"space and that {target.parent} is writable") from exc
