"""One self-contained HTML report of an output folder: figures, plots and inventory summary.

Everything is inside the one file (images as base64 data URIs, inline CSS, no script, no link to
anything), so it can be mailed, attached to an issue or opened offline years later and look the
same. The report reads the folder and never writes into it, apart from the HTML file itself.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from html import escape
from pathlib import Path

import numpy as np
import pyogrio.raw
from pyogrio.errors import DataLayerError, DataSourceError

from slidemap import __version__
from slidemap.errors import SlidemapError
from slidemap.io.atomic import atomic_path, check_outputs, make_output_dir
from slidemap.report.plots import (
    curves_figure,
    png_bytes,
    probability_figure,
    read_history,
    size_histogram_figure,
)

Rows = list[tuple[str, object]]
METRICS = ("precision", "recall", "f1", "iou", "accuracy", "miou", "auc", "pixels")
LARGEST = 10

CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d232b;
       background: #f4f5f7; margin: 0; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; }
header { border-bottom: 3px solid #b5562c; margin-bottom: 18px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 30px 0 10px; border-bottom: 1px solid #d5d9de; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 18px 0 8px; }
.meta { color: #5d6773; font-size: 13px; margin: 0 0 10px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { background: #fff; border: 1px solid #d5d9de; border-radius: 8px; padding: 10px 16px;
        min-width: 130px; }
.card b { display: block; font-size: 22px; color: #b5562c; }
.card span { font-size: 13px; color: #5d6773; }
table { border-collapse: collapse; background: #fff; margin: 8px 0 14px; font-size: 14px; }
th, td { border: 1px solid #d5d9de; padding: 4px 10px; text-align: left; }
th { background: #eceef1; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.tp { background: #d8f3dc; } td.fp { background: #fbd5d5; } td.fn { background: #d6e4ff; }
figure { background: #fff; border: 1px solid #d5d9de; border-radius: 8px; margin: 10px 0;
         padding: 10px; display: inline-block; max-width: calc(100% - 22px); vertical-align: top; }
figure img { max-width: 100%; height: auto; display: block; }
figcaption { font-size: 13px; color: #5d6773; margin-top: 6px; }
code { font-size: 13px; word-break: break-all; }
"""


def build_report(folder: Path, out: Path | None = None, overwrite: bool = True) -> Path:
    """Write the HTML report of ``folder`` (a training run, evaluation or prediction folder).

    ``out`` defaults to ``folder/report.html``; an existing file there is replaced only with
    ``overwrite``, and never one of the folder's files the report is made from.
    """
    if not folder.is_dir():
        raise SlidemapError(f"{folder} is not a folder: pass a run, evaluate or predict --out "
                            "folder")
    parts = [_training(folder), _evaluation(folder), *_inventories(folder), _explanation(folder)]
    found = [p for p in parts if p is not None]
    if not found:
        raise SlidemapError(
            f"{folder} has no history.csv, summary.json, metrics.json, *_landslides.gpkg or "
            "explain.json: pass a run, evaluate, predict or explain output folder")
    out = out or folder / "report.html"
    if out.is_dir():
        raise SlidemapError(f"--out {out} is a folder: give a file name such as report.html")
    check_outputs([out], [p for p in folder.iterdir() if p.is_file() and p.suffix != ".html"],
                  overwrite)
    cards = "".join(f"<div class='card'><b>{_text(v)}</b><span>{escape(k)}</span></div>"
                    for cards, _ in found for k, v in cards)
    stamp = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>slidemap report: {escape(folder.resolve().name)}</title>"
        f"<style>{CSS}</style></head><body><main><header>"
        f"<h1>slidemap report: {escape(folder.resolve().name)}</h1>"
        f"<p class='meta'>{escape(str(folder.resolve()))} · {stamp} · slidemap {__version__}</p>"
        f"</header><div class='cards'>{cards}</div>"
        + "".join(html for _, html in found)
        + "</main></body></html>\n"
    )
    make_output_dir(out.parent)
    with atomic_path(out, overwrite) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out


# -- sections: each returns (key figures for the cards, HTML) or None ----------------------


def _training(folder: Path) -> tuple[Rows, str] | None:
    history_path, summary_path = folder / "history.csv", folder / "summary.json"
    if not history_path.exists() and not summary_path.exists():
        return None
    summary = _json(summary_path) if summary_path.exists() else {}
    html = ["<h2>Training run</h2>"]
    if summary:
        html.append(_pairs(list(summary.items())))
    model = _json(folder / "model.json") if (folder / "model.json").exists() else {}
    if model:
        provenance = model.get("provenance", {})
        html.append("<h3>Best model</h3>" + _pairs([
            ("architecture", model.get("architecture")), ("width", model.get("width")),
            ("channels", ", ".join(model.get("channels", []))),
            ("threshold", model.get("threshold")), ("epoch", provenance.get("epoch")),
            *[(f"validation {k}", v) for k, v in provenance.get("validation", {}).items()],
        ]))
    history = read_history(history_path) if history_path.exists() else {}
    if history and len(next(iter(history.values()))):
        curves = folder / "curves.png"
        image = curves.read_bytes() if curves.exists() else png_bytes(curves_figure(history))
        html.append(_image(image, "loss and validation metrics per epoch"))
        columns = list(history)
        cells = {c: _column(history[c]) for c in columns}
        rows = [[cells[c][i] for c in columns] for i in range(len(history[columns[0]]))]
        html.append("<h3>History</h3>" + _grid(columns, rows))
    cards: Rows = [(k.replace("_", " "), summary[k]) for k in ("best_val_f1", "best_epoch")
                   if k in summary]
    if not cards and np.isfinite(history.get("val_f1", np.zeros(0))).any():
        best = int(np.nanargmax(history["val_f1"]))  # a run still training has no summary yet
        cards = [("best val f1", float(history["val_f1"][best])),
                 ("best epoch", int(history["epoch"][best]) if "epoch" in history else best + 1)]
    return cards, "".join(html)


def _evaluation(folder: Path) -> tuple[Rows, str] | None:
    path = folder / "metrics.json"
    if not path.exists():
        return None
    report = _json(path)
    metrics = report.get("metrics", {})
    html = ["<h2>Evaluation</h2>", _pairs([(k, report.get(k)) for k in
                                           ("truth", "prediction", "model", "threshold")
                                           if k in report])]
    html.append("<h3>Landslide-class metrics</h3>"
                + _pairs([(k, metrics[k]) for k in METRICS if k in metrics]))
    if all(k in metrics for k in ("tp", "fp", "fn", "tn")):
        html.append("<h3>Confusion (pixels)</h3>" + _confusion(metrics))
    for name, caption in (("pr_curve.png", "precision–recall curve, threshold in use marked"),
                          ("errors_overlay.png", "true positives, false positives and false "
                                                 "negatives (decimated preview)")):
        if (folder / name).exists():
            html.append(_image((folder / name).read_bytes(), caption))
    names = {"f1": "F1", "iou": "IoU", "auc": "AUC"}
    cards: Rows = [(names.get(k, k), metrics[k])
                   for k in ("f1", "iou", "precision", "recall", "auc") if k in metrics]
    return cards, "".join(html)


def _inventories(folder: Path) -> list[tuple[Rows, str]]:
    return [_inventory(path) for path in sorted(folder.glob("*_landslides.gpkg"))]


def _inventory(path: Path) -> tuple[Rows, str]:
    try:
        meta, _, _, values = pyogrio.raw.read(path, read_geometry=False)
    except (DataSourceError, DataLayerError) as exc:
        raise SlidemapError(f"inventory {path} cannot be read ({exc}): "
                            "re-run slidemap predict") from exc
    fields = dict(zip(meta["fields"], values, strict=True))
    areas = np.asarray(fields.get("area_m2", []), dtype=np.float64)
    total = float(areas.sum())
    html = [f"<h2>Landslide inventory: {escape(path.name)}</h2>", _pairs([
        ("landslides", len(areas)), ("total area (m²)", total), ("total area (ha)", total / 1e4),
        ("median area (m²)", float(np.median(areas)) if areas.size else None),
        ("largest area (m²)", float(areas.max()) if areas.size else None),
        ("mean probability", float(np.mean(fields["mean_prob"]))
         if areas.size and "mean_prob" in fields else None),
    ])]
    html.append(_image(png_bytes(size_histogram_figure(areas)), "landslide sizes"))
    if areas.size:
        columns = [c for c in ("id", "area_m2", "perimeter_m", "mean_prob", "max_prob", "pixels")
                   if c in fields]
        order = np.argsort(-areas)[:LARGEST]
        rows = [[_text(fields[c][i]) for c in columns] for i in order]
        html.append(f"<h3>{min(LARGEST, areas.size)} largest</h3>" + _grid(columns, rows))
    prob = path.with_name(path.name.replace("_landslides.gpkg", "_prob.tif"))
    if prob.exists():
        html.append(_image(png_bytes(probability_figure(prob)),
                           f"probability map {prob.name} (decimated preview)"))
    return [("landslides", len(areas)), ("landslide area (ha)", total / 1e4)], "".join(html)


def _explanation(folder: Path) -> tuple[Rows, str] | None:
    path = folder / "explain.json"
    if not path.exists():
        return None
    summary = _json(path)
    html = ["<h2>Explanation</h2>", _pairs([(k, summary.get(k)) for k in
                                            ("image", "window", "decimation", "box", "layer",
                                             "region_pixels", "mean_probability")])]
    for name in summary.get("files", {}):
        if name.endswith(".png") and (folder / name).exists():
            html.append(_image((folder / name).read_bytes(), name))
    return [("explained pixels", summary.get("region_pixels"))], "".join(html)


# -- HTML pieces ----------------------------------------------------------------------------


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SlidemapError(f"{path} is not valid JSON ({exc}): re-run the command that wrote "
                            "it") from exc
    return data if isinstance(data, dict) else {}


def _text(value: object) -> str:
    """A value as table text: ints grouped, floats to 4 decimals, NaN as n/a."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        text = "—"
    elif isinstance(value, bool):
        text = str(value)
    elif isinstance(value, int):
        text = f"{value:,}"
    elif isinstance(value, float):
        if not np.isfinite(value):
            text = "n/a"
        elif 0 < abs(value) < 1e-3:
            text = f"{value:.3g}"
        else:
            text = f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.1f}"
    elif isinstance(value, list | tuple):
        text = ", ".join(_text(v) for v in value)
    else:
        text = str(value)
    return escape(text)


def _column(values: np.ndarray) -> list[str]:
    """A CSV column as text, whole-number columns (epoch) without decimals."""
    finite = values[np.isfinite(values)]
    whole = finite.size > 0 and bool(np.all(finite == np.round(finite)))
    return [_text(int(v) if whole and np.isfinite(v) else float(v)) for v in values]


def _pairs(rows: Rows) -> str:
    cells = "".join(f"<tr><th>{escape(str(k))}</th><td{_align(v)}>{_text(v)}</td></tr>"
                    for k, v in rows)
    return f"<table>{cells}</table>"


def _align(value: object) -> str:
    """Numbers right-aligned so that their digits line up; text (paths) left as it reads."""
    return " class='num'" if isinstance(value, int | float | np.number) else ""


def _grid(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td class='num'>{v}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _confusion(metrics: dict) -> str:
    total = max(1, sum(int(metrics[k]) for k in ("tp", "fp", "fn", "tn")))

    def cell(key: str, css: str = "") -> str:
        count = int(metrics[key])
        return (f"<td class='num {css}'>{key.upper()} {count:,}<br>"
                f"<small>{100 * count / total:.2f} %</small></td>")

    return ("<table><tr><th></th><th>predicted landslide</th><th>predicted background</th></tr>"
            f"<tr><th>truth landslide</th>{cell('tp', 'tp')}{cell('fn', 'fn')}</tr>"
            f"<tr><th>truth background</th>{cell('fp', 'fp')}{cell('tn')}</tr></table>")


def _image(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{escape(caption)}'>"
            f"<figcaption>{escape(caption)}</figcaption></figure>")
