"""Command line: a thin typer layer over ``slidemap.api``.

Every user-caused failure ends with one line on stderr naming the file and the fix, and a non-zero
exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rasterio.errors import RasterioError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from slidemap import api
from slidemap.errors import SlidemapError, SlidemapWarning
from slidemap.infer.predict import PredictOptions
from slidemap.io.modelfile import check_scales
from slidemap.report.html import build_report

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Map landslides from imagery and elevation data.")
console = Console(stderr=True)
DEBUG = {"on": False}

Precision = Annotated[str, typer.Option(help="bf16 (fast on CPU) or fp32")]
Tile = Annotated[int | None, typer.Option(
    min=16, help="window size in working pixels (default: the model's)")]
Overlap = Annotated[int | None, typer.Option(
    min=0, help="overlap between windows in working pixels (default: the model's)")]
Scales = Annotated[str | None, typer.Option(
    help="window scales to average, e.g. 1,0.5: each window also shrunk to half its side "
         "(default: the model's)")]
BatchSize = Annotated[int, typer.Option(min=1, help="windows per model call")]
Threshold = Annotated[float | None, typer.Option(
    help="probability from which a pixel is mapped as landslide (default: the model's)")]
Report = Annotated[bool, typer.Option("--report", help="also write report.html into --out")]
Models = Annotated[list[Path] | None, typer.Option(
    "--model", help="model file; repeat to average an ensemble (default: shipped)")]
Seed = Annotated[int | None, typer.Option(
    help="replace the config's training.seed (repeat a recipe with other seeds)")]
TTA = Annotated[bool, typer.Option(help="average the 8 flips/rotations of every window")]
Backend = Annotated[str, typer.Option(help="torch, or onnx (ONNX Runtime, always fp32)")]
Compile = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the model: a minute or more first, faster on long runs")]
Normalise = Annotated[str, typer.Option(
    help="model: the model's training statistics; scene: statistics of the data predicted "
         "(the scene, or all patches of the folder)")]


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False) -> None:
    DEBUG["on"] = debug


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML run config (see configs/)")],
    out: Annotated[Path, typer.Option(help="run folder: model, checkpoints, history")] = Path(
        "runs/latest"),
    resume: Annotated[bool, typer.Option(help="continue from the run folder's checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier run in --out")] = False,
    seed: Seed = None,
) -> None:
    """Train a model from a YAML config (with init: MODEL, a fine-tuning: see finetune)."""
    from slidemap.train.config import load_config, with_seed
    from slidemap.train.finetune import train_run

    train_run(with_seed(load_config(config), seed), out, resume=resume, overwrite=overwrite)


@app.command()
def predict(
    image: Annotated[Path, typer.Argument(
        help="image GeoTIFF (any band count), or a patch folder / Landslide4Sense split")],
    out: Annotated[Path, typer.Option(help="output folder")],
    dem: Annotated[Path | None, typer.Option(help="DEM raster, any grid or CRS")] = None,
    model: Models = None,
    tile: Tile = None,
    overlap: Overlap = None,
    batch_size: BatchSize = 8,
    precision: Precision = "bf16",
    tta: TTA = False,
    scales: Scales = None,
    threshold: Threshold = None,
    normalise: Normalise = "model",
    scale: Annotated[float | None, typer.Option(
        help="patches: up-sample by this factor before the model (default: the model's)")
    ] = None,
    pixel_size: Annotated[float | None, typer.Option(
        help="patches: pixel size in metres, for slope from DEMs without georeference")] = None,
    min_area: Annotated[float, typer.Option(help="drop polygons smaller than this (m²)")] = 0.0,
    simplify: Annotated[float, typer.Option(help="simplify polygons by this tolerance (m)")] = 0.0,
    inventory_format: Annotated[list[str] | None, typer.Option(
        "--format", help="inventory format: gpkg (default) or geojson; repeat for both")] = None,
    backend: Backend = "torch",
    compile_model: Compile = False,
    workers: Annotated[int, typer.Option(
        min=0, help="predict rows of windows on a local Dask cluster of N processes")] = 0,
    dask: Annotated[str | None, typer.Option(
        help="address of a Dask scheduler whose workers read the same file paths")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
    html_report: Report = False,
) -> None:
    """Map landslides: probability and mask GeoTIFFs plus a GeoPackage inventory.

    Given a folder of patches: a probability and a mask TIFF per patch, and metrics.json
    when the folder has masks.
    """
    options = PredictOptions(tile, overlap, batch_size, _precision(precision), tta,
                             _normalise(normalise), _backend(backend), compile_model, workers,
                             dask, _scales(scales), threshold)
    if image.is_dir() and (workers or dask):
        raise SlidemapError(f"{image} is a patch folder: --workers and --dask apply to scenes")
    if not model and not api.has_elevation(image, dem):
        console.print(f"no --dem: mapping with the RGB-only model {api.RGB_MODEL.stem} "
                      "(models/README.md)")
    if image.is_dir():
        _predict_folder(image, out, dem, model, options, scale, pixel_size, overwrite,
                        html_report)
        return
    if scale is not None or pixel_size is not None:
        raise SlidemapError(f"--scale and --pixel-size apply to patch folders, and {image} is a "
                            "file: scenes are read at the model's resolution_m")
    with _progress() as progress:
        result = api.predict(image, out, dem, model, options, min_area, simplify, overwrite,
                             progress, inventory_format or ["gpkg"])
    valid = max(result["valid_pixels"], 1)
    console.print(f"{result['landslides']} landslides, {result['landslide_area_m2']:.0f} m², "
                  f"{100 * result['landslide_pixels'] / valid:.1f} % of valid pixels")
    for key in [k for k in result if k in ("prob", "mask") or k.startswith("inventory")]:
        console.print(f"  {key.replace('_', ' '):9s} {result[key]}")
    if html_report:
        console.print(f"  report    {build_report(out)}")


@app.command()
def evaluate(
    truth: Annotated[Path, typer.Argument(help="truth raster: 0, 1 landslide, 255 ignore")],
    prediction: Annotated[Path | None, typer.Option(help="probability or mask raster")] = None,
    image: Annotated[Path | None, typer.Option(help="image to predict with --model")] = None,
    dem: Annotated[Path | None, typer.Option(help="DEM for --image")] = None,
    model: Models = None,
    out: Annotated[Path | None, typer.Option(help="folder for metrics.json (+ rasters)")] = None,
    threshold: Threshold = None,
    precision: Precision = "bf16",
    tta: TTA = False,
    scales: Scales = None,
    tile: Tile = None,
    overlap: Overlap = None,
    normalise: Normalise = "model",
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
    html_report: Report = False,
) -> None:
    """Score a prediction raster, or a model on an image, against a truth raster."""
    if html_report and out is None:
        raise SlidemapError("--report needs --out DIR to write report.html into")
    options = PredictOptions(tile, overlap, precision=_precision(precision), tta=tta,
                             normalise=_normalise(normalise), scales=_scales(scales))
    with _progress() as progress:
        report = api.evaluate(truth, prediction, image, dem, model, out, threshold, options,
                              overwrite, progress)
    table = Table(title=f"landslide class vs {truth.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("precision", "recall", "f1", "iou", "accuracy", "miou", "auc"):
        table.add_row(key, f"{report['metrics'][key]:.4f}")
    table.add_row("valid pixels", f"{report['metrics']['pixels']:,}")
    best = max(report["thresholds"], key=lambda row: row["f1"])
    table.add_row(f"f1 at best threshold {best['threshold']:g}", f"{best['f1']:.4f}")
    Console().print(table)
    if out is None:
        print(json.dumps(report["metrics"]))
    elif html_report:
        console.print(f"report {build_report(out)}")


@app.command("models")
def list_models() -> None:
    """List every registered architecture with its parameter count (5 input channels)."""
    from slidemap.models.summary import model_table

    table = Table(title="architectures (width 32, 5 input channels)")
    table.add_column("name")
    table.add_column("parameters", justify="right")
    for name, params in model_table(in_channels=5):
        table.add_row(name, f"{params:,}")
    Console().print(table)


@app.command()
def study(
    config: Annotated[Path, typer.Argument(help="study YAML: base run config + grid")],
    out: Annotated[Path, typer.Option(help="study folder: one folder per run, results.csv/md")],
) -> None:
    """Train and score a grid of runs (models × losses × variants × seeds) on one budget.

    Rerunning the same command continues an interrupted study: scored runs are skipped.
    """
    from slidemap.train.study import load_study, run_study

    rows = run_study(load_study(config), out)
    console.print(f"{len(rows)} runs → {out / 'results.md'}")


@app.command()
def explain(
    image: Annotated[Path, typer.Argument(help="image GeoTIFF")],
    out: Annotated[Path, typer.Option(help="output folder for PNGs, GeoTIFFs, explain.json")],
    dem: Annotated[Path | None, typer.Option(help="DEM raster, any grid or CRS")] = None,
    model: Annotated[Path | None, typer.Option(help="model file (default: shipped)")] = None,
    window: Annotated[str | None, typer.Option(
        help="col,row,width,height in native px (default: one tile at the centre)")] = None,
    box: Annotated[str | None, typer.Option(
        help="row0,col0,row1,col1 in window px to explain (default: predicted landslides)")
    ] = None,
    layer: Annotated[str | None, typer.Option(
        help="module name for Grad-CAM (default: the layer feeding the head)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
) -> None:
    """Why the model says landslide: Grad-CAM, attention and probability maps of one window."""
    from slidemap.explain.run import explain_window, parse_ints
    from slidemap.io.modelfile import load_model

    bundle = load_model(model or api.default_model_path())
    summary = explain_window(bundle, image, out, dem, parse_ints(window, "--window",
                                                                   "col,row,width,height"),
                             parse_ints(box, "--box", "row0,col0,row1,col1"), layer, overwrite)
    console.print(f"Grad-CAM of {summary['region_pixels']:,} working px at layer "
                  f"{summary['layer']}")
    for path in summary["files"].values():
        console.print(f"  {path}")


@app.command("report")
def make_report(
    folder: Annotated[Path, typer.Argument(help="output folder of train, evaluate or predict")],
    out: Annotated[Path | None, typer.Option(
        help="HTML file to write (default: FOLDER/report.html)")] = None,
) -> None:
    """One self-contained HTML report (figures, plots, inventory) of an output folder."""
    console.print(f"report {build_report(folder, out)}")


@app.command()
def finetune(
    model: Annotated[Path, typer.Argument(help="model file to start from")],
    config: Annotated[Path, typer.Argument(help="YAML run config: the new site's data")],
    out: Annotated[Path, typer.Option(help="run folder: model, history, finetune.json")],
    freeze_encoder: Annotated[bool, typer.Option(
        "--freeze-encoder", help="train only the decoder and head")] = False,
    resume: Annotated[bool, typer.Option(help="continue from the run folder's checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an earlier run in --out")] = False,
    seed: Seed = None,
) -> None:
    """Fine-tune a model on a config's data; finetune.json holds val figures before and after."""
    from dataclasses import replace

    from slidemap.train.config import load_config, with_seed
    from slidemap.train.finetune import finetune as run_finetune

    run_config = with_seed(load_config(config), seed)
    settings = replace(run_config.train,
                       freeze_encoder=freeze_encoder or run_config.train.freeze_encoder)
    report = run_finetune(replace(run_config, init=model, train=settings), out, resume=resume,
                          overwrite=overwrite)
    table = Table(title=f"{model.name} on the val data of {config.name}")
    for column in ("", "F1", "IoU", "precision", "recall"):
        table.add_column(column, justify="right")
    for when in ("before", "after"):
        figures = report[when]
        table.add_row(when, *(f"{figures[k]:.4f}" for k in ("f1", "iou", "precision", "recall")))
    Console().print(table)
    console.print(f"  {out / 'finetune.json'}")


@app.command()
def selftrain(
    config: Annotated[Path, typer.Argument(help="YAML run config with a selftrain: section")],
    out: Annotated[Path, typer.Option(help="folder: one run per round, rounds.csv/md, model")],
    overwrite: Annotated[bool, typer.Option(help="replace an earlier run in --out")] = False,
) -> None:
    """Train on the labelled source, then retrain with pseudo-labels of the unlabelled target."""
    from slidemap.train.config import load_config
    from slidemap.train.selftrain import selftrain as run_selftrain

    rows = run_selftrain(load_config(config), out, overwrite)
    console.print(f"{len(rows) - 1} pseudo-label rounds → {out / 'rounds.md'}, "
                  f"{out / 'model.safetensors'}")


def _predict_folder(folder: Path, out: Path, dem: Path | None, model: list[Path] | None,
                    options: PredictOptions, scale: float | None, pixel_size: float | None,
                    overwrite: bool, html_report: bool) -> None:
    """``predict`` on a patch folder: per-patch TIFFs, and the figures when it has masks."""
    if dem is not None or html_report:
        raise SlidemapError(f"{folder} is a folder, read as patches: --dem and --report apply "
                            "to scene files (patch DEMs go in the folder's dem/)")
    with _progress() as progress:
        result = api.predict_patches(folder, out, model, options, scale, pixel_size, overwrite,
                                     progress)
    valid = max(result["valid_pixels"], 1)
    console.print(f"{result['patches']} patches at scale {result['scale']:g}, "
                  f"{100 * result['landslide_pixels'] / valid:.2f} % landslide pixels → {out}")
    if "metrics" in result:
        metrics = result["metrics"]
        console.print("  ".join(f"{k} {metrics[k]:.4f}"
                                for k in ("precision", "recall", "f1", "iou")))
        console.print(f"  metrics   {out / 'metrics.json'}")


def _scales(value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return check_scales([float(v) for v in value.split(",")])
    except ValueError as exc:
        raise SlidemapError(f"--scales {value!r} is not a list of numbers: give e.g. 1,0.5"
                            ) from exc


def _normalise(value: str) -> str:
    if value not in ("model", "scene"):
        raise SlidemapError(f"--normalise {value!r} is not known: use model or scene")
    return value


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="model file (NAME.safetensors + NAME.json)")],
    out: Annotated[Path | None, typer.Option(
        help="ONNX file to write (default: NAME.onnx beside the model); with --weights, the "
             "model file to write")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing file")] = False,
    weights: Annotated[str | None, typer.Option(
        help="instead of ONNX, write a slidemap model file at --out with its weights stored as "
             "float32, float16, int8 (a quarter of float32's size) or int4 (the largest "
             "kernels in 4 bits, the rest int8)")] = None,
) -> None:
    """Export a model to ONNX (dynamic batch, height and width) for ONNX Runtime and others, or
    (--weights) store it again with smaller weights."""
    if weights is not None:
        if out is None:
            raise SlidemapError("--weights writes a new model file: name it with --out")
        stored = api.store_weights(model, out, weights, overwrite)
        console.print(f"{stored['model']}: weights stored as {stored['weights_dtype']}, "
                      f"{stored['bytes'] / 1e6:.1f} MB (was {stored['bytes_before'] / 1e6:.1f} MB)")
        return
    result = api.export_onnx(model, out, overwrite)
    console.print(f"{result['onnx']}: input x (B, {result['channels']}, H, W) normalised with "
                  f"H, W multiples of {result['stride']}; output prob (B, 1, H, W); "
                  f"opset {result['opset']}")


@app.command()
def bench(
    image: Annotated[Path, typer.Argument(help="image GeoTIFF (or VRT) to time")],
    dem: Annotated[Path | None, typer.Option(help="DEM raster, any grid or CRS")] = None,
    model: Models = None,
    tile: Tile = None,
    overlap: Overlap = None,
    batch_size: BatchSize = 8,
    precision: Precision = "bf16",
    scales: Scales = None,
    backend: Backend = "torch",
    compile_model: Compile = False,
    sample: Annotated[int, typer.Option(
        min=1, help="windows read beforehand and timed for model-only")] = 32,
    agreement: Annotated[bool, typer.Option(
        help="also map the scene in plain torch fp32 and compare: mask agreement, max |Δp|")
    ] = False,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="also write the figures to this JSON file")] = None,
) -> None:
    """Throughput: model-only vs end-to-end megapixels/s (read, model, blend, write), peak RSS."""
    options = PredictOptions(tile, overlap, batch_size, _precision(precision),
                             backend=_backend(backend), compile=compile_model,
                             scales=_scales(scales))
    result = api.bench(image, dem, model, options, sample, agreement)
    table = Table(title=f"{image.name}: {result['size'][0]}×{result['size'][1]} px, "
                        f"{result['backend']} {result['precision']}"
                        f"{' compiled' if result['compile'] else ''}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key in ("model_only_mpx_s", "end_to_end_mpx_s", "end_to_end_share", "peak_rss_mb",
                "windows", "model_s_per_window", "end_to_end_s", "model_cpu_s",
                "end_to_end_cpu_s", "warm_up_s"):
        table.add_row(key, str(result[key]))
    for key, value in result.get("agreement_vs_fp32", {}).items():
        table.add_row(f"vs fp32: {key}", f"{value:.6g}")
    Console(stderr=True).print(table)
    print(json.dumps(result))
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2) + "\n")


def _backend(value: str) -> str:
    if value not in ("torch", "onnx"):
        raise SlidemapError(f"--backend {value!r} is not known: use torch or onnx")
    return value


def _precision(value: str) -> str:
    if value not in ("bf16", "fp32"):
        raise SlidemapError(f"--precision {value!r} is not known: use bf16 or fp32")
    return value


def main() -> None:
    """Entry point: run the app, turning expected failures (and slidemap's warnings) into
    one-line messages."""
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning(warnings.showwarning)
        _run()


def _run() -> None:
    try:
        code = app(standalone_mode=False)
        if code == 130:  # typer turns Ctrl-C into a returned exit code 130
            _fail("interrupted: no partial output was kept", code=130)
    except SlidemapError as exc:
        _fail(str(exc))
    except RasterioError as exc:
        _fail(f"raster error: {_one_line(exc)}: check the input files")
    except OSError as exc:
        hint = "free some disk space" if exc.errno == errno.ENOSPC else "check the path"
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}: {hint}".lstrip(": "))
    except KeyboardInterrupt:
        _fail("interrupted: no partial output was kept", code=130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors: unknown option, bad value
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare ``slidemap``: the help
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "slidemap"
        message = " ".join(exc.format_message().split()).rstrip(".")
        _fail(f"{message}: see '{command} --help'",
              code=exc.exit_code)


def _one_line_warning(show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` that prints a ``SlidemapWarning`` as one line, others as ``show``
    does."""
    def showwarning(message: Warning | str, category: type[Warning], *args: object,
                    **kwargs: object) -> None:
        if issubclass(category, SlidemapWarning):
            console.print(f"[bold yellow]warning:[/] {message}", highlight=False,
                          soft_wrap=True)
        else:
            show(message, category, *args, **kwargs)
    return showwarning


def _one_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _fail(message: str, code: int = 2) -> None:
    if DEBUG["on"] and sys.exc_info()[0] is not None:
        raise
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)
