"""One self-contained HTML report of an output folder: map, figures, plots and tables.

Everything is inside the one file (images as base64 data URIs, inline CSS, no link to anything;
no script either, unless the interactive map is asked for, whose Leaflet is inlined too), so it
can be mailed, attached to an issue or opened offline years later and look the same. The report
reads the folder and never writes into it, apart from the HTML file itself.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from html import escape, unescape
from pathlib import Path

import numpy as np

from slidemap import __version__
from slidemap.errors import SlidemapError, UsageError
from slidemap.evaluation.folds import LAYOUT_FILE
from slidemap.io.atomic import atomic_path, check_outputs, make_output_dir
from slidemap.report.markup import Rows, grid, image, pairs, read_json, text
from slidemap.report.plots import (
    ERROR_COLOURS,
    curves_figure,
    kept_epoch,
    png_bytes,
    read_history,
)
from slidemap.report.prediction import inventories, prediction_section, scene_name
from slidemap.report.provenance import Provenance

METRICS = ("precision", "recall", "f1", "iou", "accuracy", "miou", "auc", "pixels")
REPORT_MARK = "<p class='meta'>report of "  # the line by which a page is known as a report
# the files a page was made from, relative to its own folder, so that a later run knows
# whether the files it replaces are ones the page shows
SOURCES = re.compile(rb"<meta name='slidemap-sources' content='([^']*)'>")


def _tint(colour: tuple[int, int, int]) -> str:
    """A light tint of an error map colour, for the confusion table's cell of that outcome."""
    return "#" + "".join(f"{round(255 - 0.23 * (255 - c)):02x}" for c in colour)


CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232b;
       background: #f4f5f7; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; }
header { border-bottom: 3px solid #b5562c; margin-bottom: 18px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 30px 0 10px; border-bottom: 1px solid #d5d9de; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 18px 0 8px; }
.meta { color: #5d6773; font-size: 13px; margin: 0 0 10px; word-break: break-all; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { background: #fff; border: 1px solid #d5d9de; border-radius: 8px; padding: 10px 16px;
        min-width: 130px; }
.card b { display: block; font-size: 22px; color: #b5562c; }
.card span { font-size: 13px; color: #5d6773; }
table { border-collapse: collapse; background: #fff; margin: 8px 0 14px; font-size: 14px; }
th, td { border: 1px solid #d5d9de; padding: 4px 10px; text-align: left; }
th { background: #eceef1; }
td { word-break: break-word; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { background: #fff; border: 1px solid #d5d9de; border-radius: 8px; margin: 10px 0;
         padding: 10px; display: inline-block; max-width: calc(100% - 22px); vertical-align: top; }
figure.map { display: block; }
.row { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; }
.row figure.half { flex: 1 1 420px; margin: 0; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { font-size: 13px; color: #5d6773; margin-top: 6px; }
.caveat { background: #fff6e0; border: 1px solid #e0b85a; border-left: 6px solid #d08a00;
          border-radius: 6px; padding: 4px 16px; margin: 16px 0; }
.caveat p { margin: 6px 0 10px; }
.note { color: #5d6773; }
code { font-size: 13px; word-break: break-all; }
"""
# the confusion table's cells in tints of the error map's colours, so the two read alike
CSS += "".join(f"td.{key} {{ background: {_tint(ERROR_COLOURS[name])}; }}\n"
               for key, name in (("tp", "true positive"), ("fp", "false positive"),
                                 ("fn", "false negative")))


def build_report(folder: Path, out: Path | None = None,
                 provenance: Provenance | None = None, interactive: bool = False,
                 overwrite: bool = False) -> Path:
    """Write the HTML report of ``folder`` (a training run, evaluation or prediction folder).

    ``out`` defaults to ``folder/report.html``; an existing file there is replaced only with
    ``overwrite``, and never one of the folder's files the report is made from.
    ``provenance``: what the caller knows of how a prediction was made (its image, model, ...);
    it comes before what the rasters' tags say. ``interactive``: add a pan-and-zoom map of each
    prediction (Leaflet, inlined: the page then holds scripts, still nothing fetched).
    """
    if not folder.is_dir():
        raise SlidemapError(f"{folder} is not a folder: pass a run, evaluate or predict --out "
                            "folder")
    if (folder / LAYOUT_FILE).exists():
        raise SlidemapError(f"{folder} is a crossval folder: its report is summary.md (with "
                            "blocks.csv); pass a run, evaluate, predict or explain folder")
    out = out or folder / "report.html"
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: give a file name such as report.html")
    if out.suffix.lower() not in (".html", ".htm"):  # never one of the files the report reads
        raise UsageError(f"--out {out} is not an .html file: give a file name such as "
                         "report.html")
    predicted = inventories(folder)
    parts = [_training(folder), _evaluation(folder),
             *[prediction_section(path, provenance, interactive) for path in predicted],
             _explanation(folder)]
    found = [p for p in parts if p is not None]
    if not found:
        raise SlidemapError(
            f"{folder} has no history.csv, summary.json, metrics.json, *_landslides.gpkg "
            "(.geojson) or explain.json: pass a run, evaluate, predict or explain output folder")
    sources = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix != ".html")
    check_outputs([out], sources, overwrite)
    names = [os.path.relpath(p.resolve(), out.parent.resolve()) for p in sources]
    cards = "".join(f"<div class='card'><b>{text(v)}</b><span>{escape(k)}</span></div>"
                    for cards, _ in found for k, v in cards)
    stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    title = escape(_title(folder, predicted))
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{title}</title>"
        f"<meta name='slidemap-sources' content='{escape(json.dumps(names))}'>"
        f"<style>{CSS}</style></head><body><main><header>"
        f"<h1>{title}</h1>"
        f"{REPORT_MARK}{escape(str(folder.resolve()))} · written {stamp} · "
        f"slidemap {__version__}</p>"
        f"</header><div class='cards'>{cards}</div>"
        + "".join(html for _, html in found)
        + "</main></body></html>\n"
    )
    make_output_dir(out.parent)
    with atomic_path(out, overwrite) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


def is_report(path: Path) -> bool:
    """Whether ``path`` is a page that :func:`build_report` wrote, and not a user's own file
    that bears its name (notes saved as report.html in the folder): only the former may be
    removed as an earlier run's report."""
    try:
        return REPORT_MARK.encode() in path.read_bytes()
    except OSError:
        return False


def report_sources(path: Path) -> set[Path] | None:
    """The files the report at ``path`` was made from, or None where the page does not say
    (a page of an earlier slidemap version)."""
    try:
        found = SOURCES.search(path.read_bytes())
    except OSError:
        return None
    if found is None:
        return None
    try:
        names = json.loads(unescape(found.group(1).decode()))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    base = path.parent.resolve()
    return {(base / name).resolve() for name in names if isinstance(name, str)}


def _title(folder: Path, predicted: list[Path]) -> str:
    """What the report is of: the scene(s) mapped, else the run or evaluation."""
    if predicted:
        return "Landslide map of " + ", ".join(scene_name(p) for p in predicted)
    metrics = folder / "metrics.json"
    if metrics.exists():
        truth = read_json(metrics).get("truth")
        if isinstance(truth, str) and truth:
            return f"Evaluation against {Path(truth).name}"
    if (folder / "history.csv").exists() or (folder / "summary.json").exists():
        return f"Training run {folder.resolve().name}"
    return f"slidemap report: {folder.resolve().name}"


# -- sections: each returns (key figures for the cards, HTML) or None ----------------------


def _training(folder: Path) -> tuple[Rows, str] | None:
    history_path, summary_path = folder / "history.csv", folder / "summary.json"
    if not history_path.exists() and not summary_path.exists():
        return None
    summary = read_json(summary_path) if summary_path.exists() else {}
    html = ["<h2>Training run</h2>"]
    # summary.json's best_* are the kept model's (select: last keeps the last epoch)
    kept = {"best_val_f1": "val F1 of the kept model", "best_epoch": "kept epoch"}
    scalars = [(kept.get(k, k), v) for k, v in summary.items()
               if not isinstance(v, (dict, list))]
    if scalars:  # an ensemble's per-member records are in the members' own folders
        html.append(pairs(scalars))
    model = read_json(folder / "model.json") if (folder / "model.json").exists() else {}
    if model:
        provenance = model.get("provenance", {})
        html.append("<h3>Kept model (model.safetensors)</h3>" + pairs([
            ("architecture", model.get("architecture")), ("width", model.get("width")),
            ("channels", ", ".join(model.get("channels", []))),
            ("threshold", model.get("threshold")), ("epoch", provenance.get("epoch")),
            *[(f"validation {k}", v) for k, v in provenance.get("validation", {}).items()],
        ]))
    history = read_history(history_path) if history_path.exists() else {}
    if history and len(next(iter(history.values()))):
        curves = folder / "curves.png"
        picture = (curves.read_bytes() if curves.exists()
                   else png_bytes(curves_figure(history, kept_epoch(folder))))
        html.append(image(picture, "loss and validation metrics per epoch"))
        columns = list(history)
        cells = {c: _column(history[c]) for c in columns}
        rows = [[cells[c][i] for c in columns] for i in range(len(history[columns[0]]))]
        html.append("<h3>History</h3>" + grid(columns, rows))
    cards: Rows = [(name, summary[k]) for k, name in kept.items() if summary.get(k) is not None]
    if not cards and np.isfinite(history.get("val_f1", np.zeros(0))).any():
        best = int(np.nanargmax(history["val_f1"]))  # a run still training has no summary yet
        cards = [("best val f1", float(history["val_f1"][best])),
                 ("best epoch", int(history["epoch"][best]) if "epoch" in history else best + 1)]
    return cards, "".join(html)


def _evaluation(folder: Path) -> tuple[Rows, str] | None:
    path = folder / "metrics.json"
    if not path.exists():
        return None
    report = read_json(path)
    metrics = report.get("metrics", {})
    html = ["<h2>Evaluation</h2>", pairs([(k, report.get(k)) for k in
                                           ("truth", "prediction", "model", "threshold")
                                           if k in report])]
    html.append("<h3>Landslide-class metrics</h3>"
                + pairs([(k, metrics[k]) for k in METRICS if k in metrics]))
    if all(k in metrics for k in ("tp", "fp", "fn", "tn")):
        html.append("<h3>Confusion (pixels)</h3>" + _confusion(metrics))
    for name, caption in (("pr_curve.png", "precision–recall curve, threshold in use marked"),
                          ("errors_overlay.png", "true positives, false positives and false "
                                                 "negatives (decimated preview)")):
        if (folder / name).exists():
            html.append(image((folder / name).read_bytes(), caption))
    names = {"f1": "F1", "iou": "IoU", "auc": "AUC"}
    cards: Rows = [(names.get(k, k), metrics[k])
                   for k in ("f1", "iou", "precision", "recall", "auc") if k in metrics]
    return cards, "".join(html)


def _explanation(folder: Path) -> tuple[Rows, str] | None:
    path = folder / "explain.json"
    if not path.exists():
        return None
    summary = read_json(path)
    html = ["<h2>Explanation</h2>", pairs([(k, summary.get(k)) for k in
                                            ("image", "window", "decimation", "box", "layer",
                                             "region_pixels", "mean_probability")])]
    for name in summary.get("files", {}):
        if name.endswith(".png") and (folder / name).exists():
            html.append(image((folder / name).read_bytes(), name))
    return [("explained pixels", summary.get("region_pixels"))], "".join(html)


# -- HTML pieces ----------------------------------------------------------------------------


def _column(values: np.ndarray) -> list[str]:
    """A CSV column as text, whole-number columns (epoch) without decimals; a text column
    (weights) as it is."""
    if values.dtype.kind == "U":
        return [text(str(v)) for v in values]
    finite = values[np.isfinite(values)]
    whole = finite.size > 0 and bool(np.all(finite == np.round(finite)))
    return [text(int(v) if whole and np.isfinite(v) else float(v)) for v in values]


def _confusion(metrics: dict) -> str:
    total = max(1, sum(int(metrics[k]) for k in ("tp", "fp", "fn", "tn")))

    def cell(key: str, css: str = "") -> str:
        count = int(metrics[key])
        return (f"<td class='num {css}'>{key.upper()} {count:,}<br>"
                f"<small>{100 * count / total:.2f} %</small></td>")

    return ("<table><tr><th></th><th>predicted landslide</th><th>predicted background</th></tr>"
            f"<tr><th>truth landslide</th>{cell('tp', 'tp')}{cell('fn', 'fn')}</tr>"
            f"<tr><th>truth background</th>{cell('fp', 'fp')}{cell('tn')}</tr></table>")
