"""Command line: a thin typer layer over ``slidemap.api``.

Every failure ends with one line on stderr that names the file and the fix: exit 2 for a usage
error (unknown option, value not among the choices, options that do not go together), exit 1 for
anything else; ``--debug`` shows the traceback instead. Messages go through :mod:`logging`
(``--quiet``, ``--verbose``), on stderr; stdout carries only data asked for (``--json``).

``slidemap --help`` must answer at once, so only the standard library, typer,
``slidemap.errors`` and ``slidemap.logs`` are imported here: each command imports what it needs
(the api, torch, rasterio, rich) in its body; tests/cli/test_cli.py checks it.

A command: options typed so the help shows them (choices as ``Literal``, repeatable choices as a
list of an ``Enum``, lists with a ``metavar``); imports in the body; a wrong combination of
options raises ``UsageError`` (exit 2), anything else ``SlidemapError`` (exit 1); a progress bar
from ``_progress()`` (None off a terminal or with --quiet); results as ``log.info`` lines and
``_show(table)`` on stderr; JSON on stdout only behind ``--json``.
"""

from __future__ import annotations

import errno
import logging
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer

from slidemap import __version__
from slidemap.errors import SlidemapError, SlidemapWarning, UsageError
from slidemap.logs import LOGGER, OneLineHandler, show_messages
from slidemap.schema import values as schema_values

if TYPE_CHECKING:
    from rich.progress import Progress
    from rich.table import Table

    from slidemap.api import AdaptOptions, PredictOptions

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Map landslides from imagery and elevation data.")
log = logging.getLogger(LOGGER)
STATE: dict[str, Any] = {"debug": False, "quiet": False, "command": "slidemap", "messages": None}


class InventoryFormat(str, Enum):
    """An enum, not a Literal: typer takes repeatable choices only as a list of an Enum."""

    gpkg = "gpkg"
    geojson = "geojson"


# Options that several commands share: choices as Literal (shown as <a|b> in the help).
Precision = Annotated[schema_values.Precision, typer.Option(
    help="auto (bf16 where the CPU computes in it, else fp32), bf16 or fp32")]
Tile = Annotated[int | None, typer.Option(
    min=16, help="window size in working pixels (default: the model's)")]
Overlap = Annotated[int | None, typer.Option(
    min=0, help="overlap between windows in working pixels (default: the model's)")]
Scales = Annotated[str | None, typer.Option(
    metavar="<float,...>",
    help="window scales to average, e.g. 1,0.5: each window also shrunk to half its side "
         "(default: the model's)")]
BatchSize = Annotated[int, typer.Option(min=1, help="windows per model call")]
Threshold = Annotated[float | None, typer.Option(
    help="probability from which a pixel is mapped as landslide (default: the model's)")]
Report = Annotated[bool, typer.Option("--report", help="also write report.html into --out")]
Models = Annotated[list[Path] | None, typer.Option(
    "--model", metavar="<path>",
    help="model file or a shipped model's name (slidemap models); repeat to average an "
         "ensemble (default: shipped)")]
Seed = Annotated[int | None, typer.Option(
    min=0, max=schema_values.MAX_SEED,
    help="replace the config's training.seed (repeat a recipe with other seeds)")]
Overrides = Annotated[list[str] | None, typer.Option(
    "--set", metavar="KEY=VALUE",
    help="override a config key, e.g. --set training.lr=4e-3 (YAML value; repeatable)")]
TTA = Annotated[bool, typer.Option(help="average the 8 flips/rotations of every window")]
Backend = Annotated[schema_values.Backend, typer.Option(
    help="torch, or onnx (ONNX Runtime, always fp32)")]
Compile = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the model: a minute or more first, faster on long runs")]
AdaptFlag = Annotated[bool, typer.Option(
    "--adapt", help="first fine-tune a copy of the model on the scene's own confident pixels "
                    "(progressive pseudo-labels; a few minutes), then map with it")]
AdaptMinutes = Annotated[float | None, typer.Option(
    metavar="<minutes>", help="with --adapt: wall time the adaptation may take (default 3)")]
AdaptWindows = Annotated[int | None, typer.Option(
    metavar="<n>", help="with --adapt: training windows in all (default 512)")]
Normalise = Annotated[schema_values.Normalise, typer.Option(
    help="model: the model's training statistics; scene: statistics of the data predicted "
         "(the scene, or all patches of the folder)")]


def _show_version(value: bool) -> None:
    if value:
        print(f"slidemap {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="also debug messages")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="only warnings and errors: no summaries, tables or progress bars")
    ] = False,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_show_version, help="print the version and exit")
    ] = False,
) -> None:
    if verbose and quiet:
        raise UsageError("--verbose and --quiet do not go together: give one")
    STATE.update(debug=debug, quiet=quiet, command=f"{ctx.command_path} {ctx.invoked_subcommand}")
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)


@contextmanager
def _progress() -> Iterator[Progress | None]:
    """A progress bar on a terminal's stderr (none with --quiet, or when stderr is a file: a
    finished bar would leave a blank line there); messages logged meanwhile print above it."""
    from rich.console import Console

    console = Console(stderr=True)
    if STATE["quiet"] or not console.is_terminal:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as progress:
        messages: OneLineHandler | None = STATE["messages"]  # None when main() did not run
        if messages is not None:
            messages.live = console
        try:
            yield progress
        finally:
            if messages is not None:
                messages.live = None


def _show(table: Table) -> None:
    """A table of results on stderr (none with --quiet): stdout is for data asked for."""
    if not STATE["quiet"]:
        from rich.console import Console

        Console(stderr=True).print(table)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/)")],
    out: Annotated[Path, typer.Option(help="run folder: model, checkpoints, history")] = Path(
        "runs/latest"),
    resume: Annotated[bool, typer.Option(help="continue from the run folder's checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier run in --out")] = False,
    seed: Seed = None,
    overrides: Overrides = None,
) -> None:
    """Train a model from a YAML config (with init: MODEL, a fine-tuning: see finetune)."""
    from slidemap import api

    api.train(config, out, resume, overwrite, seed, overrides or ())


@app.command()
def predict(
    image: Annotated[str, typer.Argument(
        help="image: any GDAL raster name (file, /vsizip/..., https://..., s3://..., "
             "HDF5:\"f.h5\"://img, .vrt) or a STAC Item JSON (image and DEM assets), or a "
             "patch folder / Landslide4Sense split")],
    out: Annotated[Path, typer.Option(help="output folder")],
    dem: Annotated[str | None, typer.Option(
        help="DEM raster (any GDAL name), any grid or CRS")] = None,
    model: Models = None,
    tile: Tile = None,
    overlap: Overlap = None,
    batch_size: BatchSize = 1,
    precision: Precision = "auto",
    tta: TTA = False,
    scales: Scales = None,
    threshold: Threshold = None,
    normalise: Normalise = "model",
    scale: Annotated[float | None, typer.Option(
        help="patches: resize by this factor before the model, e.g. 2 up-samples, 0.5 halves "
             "(default: the model's); none that shrinks a patch below 16 px a side")
    ] = None,
    pixel_size: Annotated[float | None, typer.Option(
        help="patches: pixel size in metres, for slope from DEMs without georeference")] = None,
    min_area: Annotated[float | None, typer.Option(
        help="drop polygons smaller than this (m²; default: 4 working pixels of the model)")
    ] = None,
    simplify: Annotated[float | None, typer.Option(
        help="simplify outlines by this tolerance (m; default: half a working pixel)")] = None,
    prob_dtype: Annotated[Literal["float32", "uint8"] | None, typer.Option(
        help="scenes: probability raster type, uint8 (default: steps of 1/254 with "
             "scale/offset, a twelfth of the size) or float32")] = None,
    inventory_format: Annotated[list[InventoryFormat] | None, typer.Option(
        "--format", metavar="<gpkg|geojson>",
        help="inventory format: gpkg (default) or geojson; repeat for both")] = None,
    backend: Backend = "torch",
    compile_model: Compile = False,
    workers: Annotated[int, typer.Option(
        min=0, help="predict rows of windows on a local Dask cluster of N processes (at most one "
                    "per CPU core)")] = 0,
    dask: Annotated[str | None, typer.Option(
        help="address of a Dask scheduler whose workers read the same file paths")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
    html_report: Report = False,
    memory_mb: Annotated[int | None, typer.Option(
        min=64, help="memory budget of the scene's buffers in MB, whatever the scene's size "
                     "(default: 512; the model and runtime come on top)")] = None,
    adapt: AdaptFlag = False,
    adapt_minutes: AdaptMinutes = None,
    adapt_windows: AdaptWindows = None,
    adapt_save: Annotated[Path | None, typer.Option(
        metavar="<path>", help="with --adapt: also save the adapted model file here")] = None,
) -> None:
    """Map landslides: probability and mask GeoTIFFs plus a GeoPackage inventory.

    Given a folder of patches: a probability and a mask TIFF per patch, and metrics.json
    when the folder has masks.
    """
    from slidemap import api

    options = api.PredictOptions(tile, overlap, batch_size, precision, tta, normalise, backend,
                                 compile_model, workers, dask, _scales(scales), threshold,
                                 memory_mb=memory_mb)
    log.debug(repr(options))
    folder = api.is_patch_folder(image)
    if folder and (workers or dask):
        raise UsageError(f"{image} is a patch folder: --workers and --dask apply to scenes")
    if folder:
        scene_only = {"--prob-dtype": prob_dtype is not None, "--format": inventory_format,
                      "--min-area": min_area is not None, "--simplify": simplify is not None,
                      "--adapt": adapt}
        given = [name for name, value in scene_only.items() if value]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise UsageError(f"{image} is a patch folder: {', '.join(given)} {verb} to scenes "
                             "(patches are written as probability and mask TIFFs)")
        _predict_folder(Path(image), out, dem, model, options, scale, pixel_size, overwrite,
                        html_report)
        return
    if scale is not None or pixel_size is not None:
        raise UsageError(f"--scale and --pixel-size apply to patch folders, and {image} is a "
                         "file: scenes are read at the model's resolution_m")
    formats = [f.value for f in inventory_format or [InventoryFormat.gpkg]]
    adapting = _adapt_options(adapt, adapt_minutes, adapt_windows, adapt_save)
    with _progress() as progress:
        result = api.predict(image, out, dem, model, options, min_area, simplify, overwrite,
                             progress, formats, prob_dtype or api.DEFAULT_PROB_DTYPE, html_report,
                             adapting)
    if result.adapted is not None and result.adapted["trained"]:  # else it warned
        record = result.adapted
        log.info(f"adapted to the scene in {record['seconds']:.0f} s: {record['windows']} "
                 f"windows, {len(record['rounds'])} rounds (stopped by {record['stopped_by']})")
    valid = max(result.valid_pixels, 1)
    log.info(f"{result.landslides} landslide{'s' * (result.landslides != 1)}, "
             f"{result.landslide_area_m2:.0f} m², "
             f"{100 * result.landslide_pixels / valid:.1f} % of valid pixels")
    for key, path in result.files.items():
        if key != "mask_aux":
            log.info(f"  {key.replace('_', ' '):10s} {path}")
    if result.adapted_model is not None:
        log.info(f"  adapted    {result.adapted_model}")
    if result.report is not None:
        log.info(f"  report     {result.report}")


@app.command()
def evaluate(
    truth: Annotated[str, typer.Argument(
        help="truth raster (any GDAL name: 0, 1 landslide, 255 ignore) or landslide polygons "
             "(.gpkg, ...)")],
    prediction: Annotated[str | None, typer.Option(help="probability or mask raster")] = None,
    image: Annotated[str | None, typer.Option(help="image to predict with --model")] = None,
    dem: Annotated[str | None, typer.Option(help="DEM for --image")] = None,
    model: Models = None,
    out: Annotated[Path | None, typer.Option(help="folder for metrics.json (+ rasters)")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="probability from which a pixel counts as landslide (default: the model's; for "
             "--prediction, the threshold its provenance tags record, else 0.5)")] = None,
    precision: Precision = "auto",
    tta: TTA = False,
    scales: Scales = None,
    tile: Tile = None,
    overlap: Overlap = None,
    normalise: Normalise = "model",
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
    html_report: Report = False,
    json_stdout: Annotated[bool, typer.Option(
        "--json", help="also print the metrics as JSON on stdout")] = False,
    aoi: Annotated[Path | None, typer.Option(
        help="polygons of the area labelled: only pixels inside them are scored")] = None,
) -> None:
    """Score a prediction raster, or a model on an image, against a truth raster or polygons."""
    from rich.table import Table
    from rich.text import Text

    from slidemap import api

    options = api.PredictOptions(tile, overlap, precision=precision, tta=tta,
                                 normalise=normalise, scales=_scales(scales))
    for named in (truth, image):
        if named is not None and api.is_patch_folder(named):
            raise UsageError(f"{named} is a folder: evaluate scores a raster or polygons, and "
                             f"slidemap predict {named} --out DIR scores a patch folder's "
                             "patches against their masks (DIR/metrics.json)")
    with _progress() as progress:
        report = api.evaluate(truth, prediction, image, dem, model, out, threshold, options,
                              overwrite, progress, aoi, html_report)
    table = Table(title=Text(f"landslide class vs {api.display_name(truth)}"))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("precision", "recall", "f1", "iou", "accuracy", "miou", "auc"):
        table.add_row(key, f"{report.metrics[key]:.4f}")
    table.add_row("valid pixels", f"{report.metrics['pixels']:,}")
    best = report.best
    table.add_row(f"f1 at best threshold {best['threshold']:g}", f"{best['f1']:.4f}")
    _show(table)
    if json_stdout:
        print(api.json_text(report.metrics))
    if report.report is not None:
        log.info(f"report {report.report}")


@app.command("models")
def list_models() -> None:
    """List every registered architecture with its parameter count (at a config's default width,
    5 input channels), and the shipped models, whose names every MODEL argument takes, with the
    folder that holds them (an installed slidemap keeps them in site-packages)."""
    from rich.console import Console
    from rich.table import Table

    from slidemap import api

    rows = api.architectures(in_channels=5)
    table = Table(title=f"architectures (width {rows[0].width}, 5 input channels)")
    table.add_column("name")
    table.add_column("parameters", justify="right")
    for architecture in rows:
        table.add_row(architecture.name, f"{architecture.parameters:,}")
    console = Console()
    console.print(table)
    # The names to pass as MODEL (suggest, export, explain, finetune, --model, init:), from any
    # folder: a wheel's copies are not under models/ of the working folder.
    folder = api.DEFAULT_MODEL.parent
    defaults = {api.DEFAULT_MODEL: "predict with --dem", api.RGB_MODEL: "predict without --dem"}
    shipped = Table(title="shipped models")
    shipped.add_column("model", overflow="fold")
    shipped.add_column("default for")
    for path in sorted(folder.glob("*.safetensors")):
        shipped.add_row(path.stem, defaults.get(path, ""))
    console.print(shipped)
    console.print("pass a shipped model's name as MODEL, from any folder", highlight=False)
    console.print(f"shipped models are in {folder}", soft_wrap=True, highlight=False)


@app.command()
def study(
    config: Annotated[Path, typer.Argument(help="study YAML: base run config + grid")],
    out: Annotated[Path, typer.Option(help="study folder: one folder per run, results.csv/md")],
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE",
        help="override a key of the study's base config (YAML value; repeatable)")] = None,
) -> None:
    """Train and score a grid of runs (models × losses × variants × seeds) on one budget.

    Rerunning the same command continues an interrupted study: scored runs are skipped.
    """
    from slidemap import api

    result = api.study(config, out, overrides or ())
    log.info(f"{len(result.rows)} runs → {result.results}")


@app.command("config-schema")
def config_schema() -> None:
    """Print the JSON Schema of run configs, for editors (configs/slidemap.schema.json)."""
    from slidemap.schema.config import json_schema

    sys.stdout.write(json_schema())


@app.command()
def crossval(
    config: Annotated[Path, typer.Argument(help="YAML run config of the candidate recipe")],
    out: Annotated[Path, typer.Option(help="folder: one run per recipe, seed and fold, tables")],
    baseline: Annotated[Path | None, typer.Option(
        help="YAML run config of the recipe to compare with (same scenes)")] = None,
    seeds: Annotated[str | None, typer.Option(
        help="comma-separated seeds, e.g. 0,1 (default: the config's crossval.seeds)")] = None,
    adapt: Annotated[bool, typer.Option(
        "--adapt", help="also adapt each candidate fold model to each of its held-out blocks "
                        "(unlabelled, as predict --adapt does) and compare: OUT/adapt/")] = False,
    adapt_minutes: AdaptMinutes = None,
    adapt_windows: AdaptWindows = None,
    overrides: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE",
        help="override a key of the candidate config (YAML value; repeatable)")] = None,
) -> None:
    """Spatial cross-validation over blocks of the config's scenes; with --baseline, the paired
    pooled-F1 difference and the decision of benchmarks/protocol/RULE.md.

    Rerunning the same command continues an interrupted protocol: scored folds are kept.
    """
    from slidemap import api

    adapting = _adapt_options(adapt, adapt_minutes, adapt_windows)
    result = api.crossval(config, out, baseline, _seeds(seeds), adapting, overrides or ())
    for label, figures in result.recipes.items():
        pooled = figures["pooled"]
        log.info(f"{label}: pooled F1 {pooled['f1']:.4f} IoU {pooled['iou']:.4f}, worst "
                 f"block {figures['worst_block']['block']} "
                 f"{figures['worst_block']['f1']:.4f}")
    if result.comparison is not None:
        comparison = result.comparison
        low, high = comparison["interval_95"]
        log.info(f"difference {comparison['pooled_f1_difference']:+.4f} "
                 f"[{low:+.4f}, {high:+.4f}]: {comparison['decision']}")
    log.info(f"  {result.summary}, {result.blocks}")
    if result.adapted is not None:
        comparison = result.adapted["comparison"]
        low, high = comparison["interval_95"]
        log.info(f"adapted − as trained: pooled F1 "
                 f"{result.adapted['recipes']['candidate']['pooled']['f1']:.4f} − "
                 f"{result.adapted['recipes']['baseline']['pooled']['f1']:.4f} = "
                 f"{comparison['pooled_f1_difference']:+.4f} [{low:+.4f}, {high:+.4f}]: "
                 f"{comparison['decision']} → "
                 f"{out / 'adapt' / 'summary.md'}")


def _adapt_options(adapt: bool, minutes: float | None, windows: int | None,
                   save: Path | None = None) -> AdaptOptions | None:
    """The adaptation asked for with --adapt, or None; its options alone are a usage error."""
    from slidemap.api import AdaptOptions

    if not adapt:
        given = [name for name, value in (("--adapt-minutes", minutes),
                                          ("--adapt-windows", windows), ("--adapt-save", save))
                 if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} apply with --adapt: add --adapt")
        return None
    defaults = AdaptOptions()
    return AdaptOptions(minutes=defaults.minutes if minutes is None else minutes,
                        windows=defaults.windows if windows is None else windows, save=save)


def _seeds(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        seeds = tuple(int(v) for v in value.split(","))
    except ValueError as exc:
        raise UsageError(f"--seeds {value!r} is not a list of integers: give e.g. 0,1"
                         ) from exc
    if len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {value!r} repeats a seed: give each seed once")
    if not all(0 <= seed <= schema_values.MAX_SEED for seed in seeds):
        raise UsageError(f"--seeds {value!r} holds a seed outside 0 to "
                         f"{schema_values.MAX_SEED}: give e.g. 0,1")
    return seeds


@app.command()
def explain(
    image: Annotated[str, typer.Argument(help="image raster (any GDAL name)")],
    out: Annotated[Path, typer.Option(help="output folder for PNGs, GeoTIFFs, explain.json")],
    dem: Annotated[str | None, typer.Option(help="DEM raster, any grid or CRS")] = None,
    model: Annotated[Path | None, typer.Option(
        help="model file or a shipped model's name (default: shipped)")] = None,
    window: Annotated[str | None, typer.Option(
        help="col,row,width,height in native px (default: one tile at the centre)")] = None,
    box: Annotated[str | None, typer.Option(
        help="row0,col0,row1,col1 in window px to explain (default: predicted landslides); "
             "stored rows/columns like --window (row 0 is the south edge of a south-up grid): "
             "the north-up PNGs outline it")
    ] = None,
    layer: Annotated[str | None, typer.Option(
        help="module name for Grad-CAM (default: the layer feeding the head); of an ensemble, "
             "named as in each member, whose maps are averaged")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
) -> None:
    """Why the model says landslide: Grad-CAM, attention and probability maps of one window."""
    from slidemap import api

    result = api.explain(image, out, dem, model, _ints(window, "--window", "col,row,width,height"),
                         _ints(box, "--box", "row0,col0,row1,col1"), layer, overwrite)
    log.info(f"Grad-CAM of {result.region_pixels:,} working px at layer {result.layer}")
    for path in result.files.values():
        log.info(f"  {path}")


def _ints(value: str | None, flag: str, names: str) -> tuple[int, ...] | None:
    """``"a,b,..."`` → one int per name in ``names``, or a usage error showing the form."""
    if value is None:
        return None
    try:
        numbers = tuple(int(p.strip()) for p in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != len(names.split(",")):
        raise UsageError(f"{flag} {value!r} is not valid: give {names} as integers")
    return numbers


@app.command("report")
def make_report(
    folder: Annotated[Path, typer.Argument(help="output folder of train, evaluate or predict")],
    out: Annotated[Path | None, typer.Option(
        help="HTML file to write (default: FOLDER/report.html)")] = None,
    image: Annotated[str | None, typer.Option(
        help="predict folders: imagery under the map (default: the input named in the "
             "rasters' provenance tags)")] = None,
    interactive: Annotated[bool, typer.Option(
        help="predict folders: add a pan-and-zoom map (Leaflet, inlined: works offline)")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing report")] = False,
) -> None:
    """One self-contained HTML report (map, figures, plots, inventory) of an output folder."""
    from slidemap import api

    log.info(f"report {api.report(folder, out, image, interactive, overwrite).html}")


@app.command()
def newsite(
    image: Annotated[str, typer.Argument(
        help="image of the scene (a GeoTIFF or any GDAL raster name)")],
    labels: Annotated[Path, typer.Argument(
        help="landslide polygons drawn over it (.gpkg, .geojson, .shp, zipped .shp; any CRS)")],
    out: Annotated[Path, typer.Option(help="folder: config.yaml, model, map/")],
    aoi: Annotated[Path | None, typer.Option(
        help="polygons of the area labelled (default: the whole image; outside is ignored)")
    ] = None,
    dem: Annotated[str | None, typer.Option(
        help="DEM raster (any GDAL name): adds the default model's terrain descriptors (relief, "
             "slope, curvature, roughness; not elevation)")] = None,
    init: Annotated[Path | None, typer.Option(
        help="model file or a shipped model's name to start from")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="training epochs")] = 10,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier run in --out")] = False,
) -> None:
    """Scene + landslide polygons → a model for the site and the scene's landslide map."""
    from slidemap import api

    with _progress() as progress:
        result = api.new_site(image, labels, out, aoi, dem, init, epochs, overwrite, progress)
    mapped = result.map
    log.info(f"trained in {result.train_seconds / 60:.1f} min, mapped in "
             f"{result.map_seconds / 60:.1f} min: {mapped.landslides} "
             f"landslide{'s' * (mapped.landslides != 1)}, "
             f"{mapped.landslide_area_m2:.0f} m²")
    for key, path in (("config", result.config), ("model", result.model), ("prob", mapped.prob),
                      ("mask", mapped.mask), ("inventory", mapped.inventory)):
        log.info(f"  {key:9s} {path}")


@app.command()
def suggest(
    model: Annotated[Path, typer.Argument(
        help="model file or a shipped model's name whose uncertainty guides the picks")],
    image: Annotated[str, typer.Argument(
        help="image of the scene to label (any GDAL raster name)")],
    out: Annotated[Path, typer.Option(help="boxes to label: .gpkg (or .geojson) to open in QGIS")],
    dem: Annotated[str | None, typer.Option(
        help="DEM raster (any GDAL name), if the model reads one")] = None,
    n: Annotated[int, typer.Option("--n", min=1, help="how many boxes")] = 10,
    box: Annotated[int, typer.Option(min=1, help="box side in image pixels")] = 512,
    labels: Annotated[list[Path] | None, typer.Option(
        "--labels", metavar="<path>",
        help="polygons of areas already labelled (earlier boxes, an AOI): boxes overlapping "
             "them are skipped; repeat for several files")] = None,
    spacing: Annotated[int, typer.Option(
        min=0, help="no two picks within this many boxes of each other (while possible)")] = 1,
    batch_size: BatchSize = 1,
    precision: Precision = "auto",
    memory_mb: Annotated[int | None, typer.Option(
        min=64, help="memory budget in MB of one box's arrays and the boxes' scores (default: "
                     "512; the model and runtime come on top): a larger --box may need more")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
) -> None:
    """Suggest the boxes most worth labelling next: where the model is least sure, spread out."""
    from rich.table import Table
    from rich.text import Text

    from slidemap import api

    options = api.PredictOptions(batch_size=batch_size, precision=precision,
                                 memory_mb=memory_mb)
    with _progress() as progress:
        result = api.suggest(model, image, out, dem, n, box, labels or [], spacing, options,
                             overwrite, progress)
    table = Table(title=Text(f"boxes to label next in {api.display_name(image)}"))
    for column in ("rank", "col", "row", "score", "uncertainty"):
        table.add_column(column, justify="right")
    for pick in result.picks:
        table.add_row(str(pick.rank), str(pick.col_off), str(pick.row_off),
                      f"{pick.score:.3f}", f"{pick.uncertainty:.3f}")
    _show(table)
    log.info(f"{len(result.picks)} of {result.candidates} boxes "
             f"({result.skipped_labelled} skipped as labelled) → {out}")


@app.command()
def finetune(
    model: Annotated[Path, typer.Argument(
        help="model file or a shipped model's name to start from")],
    config: Annotated[Path, typer.Argument(help="YAML run config: the new site's data")],
    out: Annotated[Path, typer.Option(help="run folder: model, history, finetune.json")],
    freeze_encoder: Annotated[bool, typer.Option(
        "--freeze-encoder", help="train only the decoder and head")] = False,
    resume: Annotated[bool, typer.Option(help="continue from the run folder's checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier run in --out")] = False,
    seed: Seed = None,
    overrides: Overrides = None,
) -> None:
    """Fine-tune a model on a config's data; finetune.json holds val figures before and after."""
    from rich.table import Table
    from rich.text import Text

    from slidemap import api

    result = api.finetune(model, config, out, freeze_encoder, resume, overwrite, seed,
                          overrides or ())
    table = Table(title=Text(f"{model.name} on the val data of {config.name}"))
    for column in ("", "F1", "IoU", "precision", "recall"):
        table.add_column(column, justify="right")
    for when, figures in (("before", result.before), ("after", result.after)):
        table.add_row(when, *(f"{figures[k]:.4f}" for k in ("f1", "iou", "precision", "recall")))
    _show(table)
    log.info(f"  {result.record}")


@app.command()
def selftrain(
    config: Annotated[Path, typer.Argument(help="YAML run config with a selftrain: section")],
    out: Annotated[Path, typer.Option(help="folder: one run per round, rounds.csv/md, model")],
    overwrite: Annotated[bool, typer.Option(help="replace an earlier run in --out")] = False,
    overrides: Overrides = None,
) -> None:
    """Train on the labelled source, then retrain with pseudo-labels of the unlabelled target."""
    from slidemap import api

    result = api.selftrain(config, out, overwrite, overrides or ())
    log.info(f"{result.pseudo_label_rounds} pseudo-label rounds → {result.table}, "
             f"{result.model}")


def _predict_folder(folder: Path, out: Path, dem: str | None, model: list[Path] | None,
                    options: PredictOptions, scale: float | None, pixel_size: float | None,
                    overwrite: bool, html_report: bool) -> None:
    """``predict`` on a patch folder: per-patch TIFFs, and the figures when it has masks."""
    from slidemap import api

    if dem is not None or html_report:
        raise UsageError(f"{folder} is a folder, read as patches: --dem and --report apply "
                         "to scene files (patch DEMs go in the folder's dem/)")
    with _progress() as progress:
        result = api.predict_patches(folder, out, model, options, scale, pixel_size, overwrite,
                                     progress)
    valid = max(result.valid_pixels, 1)
    log.info(f"{result.patches} patches at scale {result.scale:g}, "
             f"{100 * result.landslide_pixels / valid:.2f} % landslide pixels → {out}")
    if result.metrics is not None:
        metrics = result.metrics
        log.info("  ".join(f"{k} {metrics[k]:.4f}" for k in ("precision", "recall", "f1", "iou")))
        log.info(f"  metrics   {result.metrics_file}")


def _scales(value: str | None) -> tuple[float, ...] | None:
    """``--scales 1,0.5`` as numbers; a usage error when it is not such a list."""
    if value is None:
        return None
    from slidemap import api

    try:
        return api.check_scales([float(v) for v in value.split(",")])
    except ValueError as exc:
        raise UsageError(f"--scales {value!r} is not a list of numbers: give e.g. 1,0.5"
                         ) from exc
    except SlidemapError as exc:
        raise UsageError(f"--scales {value!r}: {exc}") from exc


@app.command()
def export(
    model: Annotated[Path, typer.Argument(
        help="model file (NAME.safetensors + NAME.json) or a shipped model's name")],
    out: Annotated[Path | None, typer.Option(
        help="ONNX file to write (default: NAME.onnx beside the model, or in the current "
             "folder for a model shipped in an installed slidemap); with --weights, the "
             "model file to write")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing file")] = False,
    weights: Annotated[schema_values.WeightsDtype | None, typer.Option(
        help="instead of ONNX, write a slidemap model file at --out with its weights stored as "
             "float32, float16, int8 (a quarter of float32's size) or int4 (the largest "
             "kernels in 4 bits, the rest int8)")] = None,
    member: Annotated[int | None, typer.Option(
        min=0, metavar="<k>",
        help="only network K (0 = the first) of an ensemble file (`members` in its sidecar), "
             "as a model of its own, e.g. to fine-tune or run one member at its cost; it keeps "
             "the ensemble's windows, scales and threshold, not its card")] = None,
) -> None:
    """Export a model to ONNX (dynamic batch, height and width) for ONNX Runtime and others, or
    (--weights) store it again with smaller weights."""
    from slidemap import api

    if weights is not None:
        if out is None:
            raise UsageError("--weights writes a new model file: name it with --out")
        stored = api.store_weights(model, out, weights, overwrite, member)
        log.info(f"{stored.model}: weights stored as {stored.weights_dtype}, "
                 f"{stored.bytes / 1e6:.1f} MB (was {stored.bytes_before / 1e6:.1f} MB)")
        return
    result = api.export_onnx(model, out, overwrite, member)
    log.info(f"{result.onnx}: input x (B, {result.channels}, H, W) normalised with "
             f"H, W multiples of {result.stride}; output prob (B, 1, H, W); "
             f"opset {result.opset}")


@app.command()
def bench(
    image: Annotated[str, typer.Argument(help="image to time (any GDAL raster name)")],
    dem: Annotated[str | None, typer.Option(help="DEM raster (any GDAL name), any grid or CRS")
                   ] = None,
    model: Models = None,
    tile: Tile = None,
    overlap: Overlap = None,
    batch_size: BatchSize = 1,
    precision: Precision = "auto",
    scales: Scales = None,
    backend: Backend = "torch",
    compile_model: Compile = False,
    sample: Annotated[int, typer.Option(
        min=1, help="windows read beforehand and timed for model-only")] = 32,
    agreement: Annotated[bool, typer.Option(
        help="also map the scene in plain torch fp32 and compare: mask agreement, max |Δp|")
    ] = False,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="also write the figures to this JSON file; - for stdout")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --json file")] = False,
) -> None:
    """Throughput: model-only vs end-to-end megapixels/s (read, model, blend, write), peak RSS."""
    from rich.table import Table
    from rich.text import Text

    from slidemap import api

    options = api.PredictOptions(tile, overlap, batch_size, precision, backend=backend,
                                 compile=compile_model, scales=_scales(scales))
    to_stdout = json_out is not None and str(json_out) == "-"
    result = api.bench(image, dem, model, options, sample, agreement,
                       None if to_stdout else json_out, overwrite).figures
    size = result["size"]
    table = Table(title=Text(f"{api.display_name(image)}: {size[0]}×{size[1]} px, "
                             f"{result['backend']} {result['precision']}"
                             f"{' compiled' if result['compile'] else ''}"))
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in ("model_only_mpx_s", "end_to_end_mpx_s", "end_to_end_share", "peak_rss_mb",
                "windows", "model_s_per_window", "end_to_end_s", "model_cpu_s",
                "end_to_end_cpu_s", "warm_up_s"):
        table.add_row(key, str(result[key]))
    for key, value in result.get("agreement_vs_fp32", {}).items():
        table.add_row(f"vs fp32: {key}", f"{value:.6g}")
    _show(table)
    if to_stdout:
        print(api.json_text(result))


def main() -> None:
    """Entry point: run the app, turning expected failures (and slidemap's warnings) into
    one-line messages."""
    STATE.update(debug=False, quiet=False, command="slidemap", messages=show_messages(logging.INFO),
                 terminated=False)
    with warnings.catch_warnings(), _terminate_as_interrupt():
        warnings.showwarning = _one_line_warning(warnings.showwarning)
        _run()


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """End the run on SIGTERM (``timeout``, ``docker stop``, a batch scheduler's time limit) as
    on Ctrl-C: the staged outputs are removed on the way out, where Python's default would end
    the process at once and leave them behind as hidden temporaries. The previous handler is
    restored afterwards (``main`` may run in-process)."""
    if threading.current_thread() is not threading.main_thread():  # handlers: main thread only
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt_on_terminate)
    try:
        yield
    finally:  # None: a handler installed outside Python, which cannot be put back; the default
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _interrupt_on_terminate(signum: int, frame: object) -> None:
    """Raise Ctrl-C's exception where the run is, remembering that it was SIGTERM (exit 143)."""
    STATE["terminated"] = True
    raise KeyboardInterrupt


def _interrupted() -> NoReturn:
    """The one line and exit status of a run stopped by Ctrl-C (130) or SIGTERM (143)."""
    if STATE.get("terminated"):
        _fail("terminated: no half-written file was kept", code=128 + signal.SIGTERM)
    _fail("interrupted: no half-written file was kept", code=130)


def _run() -> None:
    started = time.perf_counter()
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into a returned exit code 130
            _interrupted()
        log.debug(f"{STATE['command']} done in {time.perf_counter() - started:.1f} s")
    except UsageError as exc:
        _fail(f"{exc}: see '{STATE['command']} --help'", code=2)
    except SlidemapError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _interrupted()
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: unknown option, bad value
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare ``slidemap``: the help
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "slidemap"
        message = " ".join(exc.format_message().replace("Value error, ", "").split()).rstrip(".")
        _fail(f"{message}: see '{command} --help'",
              code=exc.exit_code)
    except Exception as exc:
        runtime = _runtime_message(exc)
        if runtime is None:
            raise
        _fail(runtime)


def _runtime_message(exc: Exception) -> str | None:
    """The one line for a raster library or file system failure; None for a bug."""
    # rasterio is imported by whichever command reads a raster; none could raise its errors
    # before, and importing it here would cost every command's start-up.
    rasterio_errors = sys.modules.get("rasterio.errors")
    if rasterio_errors is not None and isinstance(exc, rasterio_errors.RasterioError):
        return f"raster error: {_one_line(exc)}: check the input files"
    if isinstance(exc, MemoryError) or _torch_out_of_memory(exc):
        return f"out of memory: {_memory_hint()}, or close other programs; nothing was written"
    if isinstance(exc, OSError):
        hint = "free some disk space" if exc.errno == errno.ENOSPC else "check the path"
        return f"{exc.filename or ''}: {exc.strerror or exc}: {hint}".lstrip(": ")
    return None


def _torch_out_of_memory(exc: Exception) -> bool:
    """PyTorch's allocators fail with a RuntimeError, not a MemoryError (the CPU's "can't
    allocate memory", CUDA's OutOfMemoryError): a network's activations for a large --tile
    are beyond the memory budget, and ran out as a traceback."""
    return isinstance(exc, RuntimeError) and (
        type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc))


MEMORY_HINTS = {  # what lowers the memory of a command, by its last word
    # the network's activations follow the window and the batch, not the budget; a patch
    # folder's patches are held whole at their --scale
    "predict": "lower --memory-mb, --tile or --batch-size (a patch folder: a smaller --scale)",
    # a box is held whole (its channels and probabilities), its windows go through the
    # network --batch-size at a time
    "suggest": "lower --box, --batch-size or --memory-mb",
    # Grad-CAM keeps the window's activations and their gradients (2048² working px: 7 GB)
    "explain": "pass a smaller --window",
}


def _memory_hint() -> str:
    """What lowers the memory of the running command: only predict takes --memory-mb (evaluate
    maps in the default budget, training holds its scenes whole); suggest's boxes and explain's
    window go through the network whole, and said to pass a smaller scene."""
    command = STATE["command"].rsplit(" ", 1)[-1]
    return MEMORY_HINTS.get(command, "pass a smaller scene (a window of it: gdal_translate "
                                     "-srcwin)")


def _one_line_warning(show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` that logs a ``SlidemapWarning`` as one line, others as ``show``
    does."""
    def showwarning(message: Warning | str, category: type[Warning], *args: object,
                    **kwargs: object) -> None:
        if issubclass(category, SlidemapWarning):
            log.warning(str(message))
        else:
            show(message, category, *args, **kwargs)
    return showwarning


def _one_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _fail(message: str, code: int = 1) -> NoReturn:
    if STATE["debug"] and sys.exc_info()[0] is not None:
        raise
    log.error(message)
    sys.exit(code)
