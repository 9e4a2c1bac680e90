"""Command line: a thin typer layer over ``slidemap.api``.

Every user-caused failure ends with one line on stderr naming the file and the fix, and a non-zero
exit code; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rasterio.errors import RasterioError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from slidemap import api
from slidemap.errors import SlidemapError
from slidemap.infer.predict import PredictOptions
from slidemap.report.html import build_report

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Map landslides from imagery and elevation data.")
console = Console(stderr=True)
DEBUG = {"on": False}

Precision = Annotated[str, typer.Option(help="bf16 (fast on CPU) or fp32")]
Tile = Annotated[int, typer.Option(min=1, help="window size in working pixels")]
Overlap = Annotated[int, typer.Option(min=0, help="overlap between windows in working pixels")]
Report = Annotated[bool, typer.Option("--report", help="also write report.html into --out")]
Models = Annotated[list[Path] | None, typer.Option(
    "--model", help="model file; repeat to average an ensemble (default: shipped)")]
TTA = Annotated[bool, typer.Option(help="average the 8 flips/rotations of every window")]


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
) -> None:
    """Train a model from a YAML config."""
    from slidemap.train.config import load_config
    from slidemap.train.loop import train as run_training

    run_training(load_config(config), out, resume=resume, overwrite=overwrite)


@app.command()
def predict(
    image: Annotated[Path, typer.Argument(help="image GeoTIFF (any band count)")],
    out: Annotated[Path, typer.Option(help="output folder")],
    dem: Annotated[Path | None, typer.Option(help="DEM raster, any grid or CRS")] = None,
    model: Models = None,
    tile: Tile = 256,
    overlap: Overlap = 64,
    batch_size: Annotated[int, typer.Option(min=1, help="windows per model call")] = 8,
    precision: Precision = "bf16",
    tta: TTA = False,
    min_area: Annotated[float, typer.Option(help="drop polygons smaller than this (m²)")] = 0.0,
    simplify: Annotated[float, typer.Option(help="simplify polygons by this tolerance (m)")] = 0.0,
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
    html_report: Report = False,
) -> None:
    """Map landslides: probability and mask GeoTIFFs plus a GeoPackage inventory."""
    options = PredictOptions(tile, overlap, batch_size, _precision(precision), tta)
    with _progress() as progress:
        result = api.predict(image, out, dem, model, options, min_area, simplify, overwrite,
                             progress)
    valid = max(result["valid_pixels"], 1)
    console.print(f"{result['landslides']} landslides, {result['landslide_area_m2']:.0f} m², "
                  f"{100 * result['landslide_pixels'] / valid:.1f} % of valid pixels")
    for key in ("prob", "mask", "inventory"):
        console.print(f"  {key:9s} {result[key]}")
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
    threshold: Annotated[float | None, typer.Option(help="probability threshold")] = None,
    precision: Precision = "bf16",
    tta: TTA = False,
    overwrite: Annotated[bool, typer.Option(help="replace existing outputs")] = False,
    html_report: Report = False,
) -> None:
    """Score a prediction raster, or a model on an image, against a truth raster."""
    if html_report and out is None:
        raise SlidemapError("--report needs --out DIR to write report.html into")
    options = PredictOptions(precision=_precision(precision), tta=tta)
    with _progress() as progress:
        report = api.evaluate(truth, prediction, image, dem, model, out, threshold, options,
                              overwrite, progress)
    table = Table(title=f"landslide class vs {truth.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("precision", "recall", "f1", "iou", "accuracy", "miou", "auc"):
        table.add_row(key, f"{report['metrics'][key]:.4f}")
    table.add_row("valid pixels", f"{report['metrics']['pixels']:,}")
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


def _precision(value: str) -> str:
    if value not in ("bf16", "fp32"):
        raise SlidemapError(f"--precision {value!r} is not known: use bf16 or fp32")
    return value


def main() -> None:
    """Entry point: run the app, turning expected failures into one-line messages."""
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


def _one_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _fail(message: str, code: int = 2) -> None:
    if DEBUG["on"] and sys.exc_info()[0] is not None:
        raise
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)
