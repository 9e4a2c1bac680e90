"""Plots and the self-contained HTML report, down to opening it in a real (headless) browser."""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
import rasterio
import shapely
from factories import GRID, UTM47, rewrite_sidecar, write_raster
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.text import Text
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
from PIL import Image
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin
from rasterio.warp import transform

from slidemap.data.terrain import pixel_size_m
from slidemap.errors import SlidemapError
from slidemap.evaluation.metrics import BinaryConfusion
from slidemap.infer.vectorize import build_inventory, write_inventory
from slidemap.report import build_report, plot_training_curves
from slidemap.report.html import CSS as REPORT_CSS
from slidemap.report.mapview import (
    Outlines,
    map_figure,
    map_grid,
    nice_length,
    probability_backdrop,
)
from slidemap.report.markup import area
from slidemap.report.plots import (
    ERROR_COLOURS,
    GREY,
    curves_figure,
    error_map,
    jpeg_bytes,
    kept_epoch,
    png_bytes,
    pr_curve_figure,
    precision_recall,
    probability_figure,
    read_history,
    save_png,
    size_histogram_figure,
    write_evaluation_plots,
)
from slidemap.report.provenance import Provenance, accuracy_caveat, from_tags

CHROMIUM = Path("/usr/bin/chromium")
PNG_URI = "data:image/png;base64,"
JPEG_URI = "data:image/jpeg;base64,"
HISTORY = """epoch,train_loss,lr,seconds,val_precision,val_recall,val_f1,val_iou,val_auc
1,1.24933,0.00057,44.3,0.17328,1.0,0.29537,0.17328,0.6786
2,0.90972,0.00155,57.0,0.4004,0.57169,0.47096,0.30801,0.80333
3,0.79144,0.00199,24.8,0.45567,0.63161,0.52941,0.35999,0.74369
"""


def assert_png(path: Path) -> None:
    with Image.open(path) as png:
        assert png.format == "PNG" and min(png.size) > 100


def assert_self_contained(html: str) -> None:
    """Every src/href is a data URI: nothing to fetch, so the file works offline and mailed."""
    links = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]*)""", html)
    assert links and all(link.startswith((PNG_URI, JPEG_URI)) for link in links)
    assert not re.search(r"<script|<link|url\(|https?://", html)


def test_training_curves_and_run_report(tmp_path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert plot_training_curves(run) is None
    (run / "history.csv").write_text(HISTORY)
    (run / "summary.json").write_text(json.dumps({"best_epoch": 3, "best_val_f1": 0.52941}))
    assert plot_training_curves(run) == run / "curves.png"
    assert_png(run / "curves.png")
    html = build_report(run).read_text()
    assert "Training run" in html and "0.5294" in html and "val F1 of the kept model" in html
    assert html.count(PNG_URI) == 1
    assert_self_contained(html)


def test_curves_and_report_mark_the_kept_epoch_not_the_best(tmp_path) -> None:
    """``select: last`` kept epoch 3 of a run whose best F1 was epoch 2: the curves mark
    epoch 3 as the kept model and the report's cards call its F1 the kept model's (they
    marked 'best F1, epoch 2' beside cards 'best epoch 3', 'best val f1 0.47')."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.csv").write_text(HISTORY.replace("0.52941", "0.47"))
    (run / "summary.json").write_text(json.dumps({"best_epoch": 3, "best_val_f1": 0.47}))
    plot_training_curves(run)
    figure = curves_figure(read_history(run / "history.csv"), kept_epoch(run))
    marked = [line for line in figure.axes[1].get_lines() if line.get_linestyle() == "--"]
    assert [m.get_xdata()[0] for m in marked] == [3]
    assert figure.axes[1].get_legend().get_texts()[-1].get_text() == "kept model, epoch 3"
    assert all(float(t).is_integer() for t in figure.axes[0].get_xticks())  # whole epochs
    html = build_report(run).read_text()
    assert "<span>kept epoch</span>" in html and "best" not in html.split("</header>")[1][:400]


def test_validation_scores_of_0_and_1_are_drawn_inside_the_frame() -> None:
    """A validation panel fixed to 0–1 drew an F1 of 0 (or a recall of 1) on its frame, half
    clipped and hidden under it; the panel leaves a margin around 0–1."""
    history = {"epoch": np.array([1.0, 2.0]), "train_loss": np.array([0.9, 0.8]),
               "val_f1": np.zeros(2), "val_recall": np.ones(2)}
    low, high = curves_figure(history).axes[1].get_ylim()
    assert low < 0 and high > 1


def test_an_ensembles_run_shows_figures_and_a_crossval_folder_is_refused(tmp_path) -> None:
    run = tmp_path / "members"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps(
        {"members": 2, "member_summaries": [{"best_epoch": 3}], "seconds": {"member-0": 4.0}}))
    html = build_report(run).read_text()
    # the figures, not Python dicts printed into the page
    assert "members" in html and "member_summaries" not in html and "member-0" not in html
    crossval = tmp_path / "crossval"
    crossval.mkdir()
    (crossval / "blocks_layout.json").write_text("{}")
    (crossval / "summary.json").write_text(json.dumps({"folds": 4, "recipes": {"a": {}}}))
    with pytest.raises(SlidemapError, match=r"is a crossval folder: its report is summary\.md"):
        build_report(crossval)


def test_a_name_the_font_lacks_glyphs_for_draws_without_a_python_warning(tmp_path) -> None:
    """A scene named in CJK (ørtho 滑坡) printed matplotlib's 'Glyph ... missing from font'
    UserWarning with its source line, twice per figure, through predict --report -q; the
    figures are drawn (the missing glyphs as boxes, the names whole in the page's text)."""
    prob = write_raster(tmp_path / "ørtho 滑坡_prob.tif", np.full((32, 32), 0.5, np.float32))
    figure = probability_figure(prob)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert png_bytes(figure).startswith(b"\x89PNG")
        assert jpeg_bytes(figure).startswith(b"\xff\xd8")
        assert save_png(figure, tmp_path / "preview.png").is_file()


def test_pr_curve_from_the_confusion_histograms() -> None:
    separable = BinaryConfusion(0.5)
    separable.update(np.array([0.9, 0.8, 0.2, 0.1]), np.array([1, 1, 0, 0], np.uint8))
    precision, recall, average = precision_recall(separable)
    assert average == pytest.approx(1.0) and recall[-1] == 1.0 and precision[-1] == 0.5
    reversed_ = BinaryConfusion(0.5)
    reversed_.update(np.array([0.1, 0.2, 0.8, 0.9]), np.array([1, 1, 0, 0], np.uint8))
    assert precision_recall(reversed_)[2] < 0.6
    assert precision_recall(BinaryConfusion())[0].size == 0
    pr_curve_figure(BinaryConfusion())  # nothing to draw is said on the figure, not raised


def test_the_pr_legend_covers_no_part_of_a_weak_models_curve() -> None:
    """The legend sat in the lower left, where a weak model's curve (high recall at low
    precision) runs: it now lies below the axes."""
    weak = BinaryConfusion(0.5)
    rng = np.random.default_rng(0)
    truth = (rng.random(4000) < 0.07).astype(np.uint8)
    weak.update(rng.random(4000), truth)
    figure = pr_curve_figure(weak)
    figure.canvas.draw()
    legend = figure.legends[0].get_window_extent()
    assert not legend.overlaps(figure.axes[0].get_window_extent())
    assert [t.get_text()[:2] for t in figure.legends[0].get_texts()] == ["AP", "ch", "th"]


def test_error_map_colours_each_outcome_and_stays_small(tmp_path) -> None:
    truth = np.zeros((64, 64), np.uint8)
    truth[:32] = 1
    truth[:, 60:] = 255
    prob = np.zeros((64, 64), np.float32)
    prob[:16] = 0.9  # rows 0-15 TP, 16-31 FN
    prob[48:] = 0.9  # rows 48-63 FP
    pred_path = write_raster(tmp_path / "prob.tif", prob)
    truth_path = write_raster(tmp_path / "truth.tif", truth, nodata=255)
    errors = error_map(pred_path, truth_path, 0.5)
    mixed = [round(0.35 * GREY + 0.65 * c) for c in ERROR_COLOURS["true positive"]]
    assert errors[5, 5].tolist() == mixed
    assert errors[20, 5].tolist() == [round(0.35 * GREY + 0.65 * c)
                                      for c in ERROR_COLOURS["false negative"]]
    assert errors[50, 5].tolist() == [round(0.35 * GREY + 0.65 * c)
                                      for c in ERROR_COLOURS["false positive"]]
    assert errors[40, 5].tolist() == [GREY] * 3 and errors[40, 62].tolist() == [GREY // 2] * 3
    assert error_map(pred_path, truth_path, 0.5, max_side=16).shape == (16, 16, 3)


def south_up(array: np.ndarray, height: int) -> tuple[np.ndarray, Affine]:
    """The same ground as ``array`` on GRID, stored south up: rows reversed, y growing down."""
    return array[..., ::-1, :].copy(), Affine(GRID.a, 0, GRID.c, 0, -GRID.e,
                                              GRID.f + GRID.e * height)


def test_previews_face_north_on_a_south_up_grid(tmp_path) -> None:
    """The error overlay and the report's probability preview of a south-up grid are the
    north-up grid's pictures (they were drawn as the rows lie: upside down)."""
    truth = np.zeros((64, 48), np.uint8)
    truth[:20, 10:30] = 1  # landslides in the north
    prob = np.where(truth == 1, 0.9, 0.1).astype(np.float32)
    prob[:5] = 0.8  # a false positive strip along the north edge
    pictures = []
    for name, (prob_, truth_, grid) in {
            "north": (prob, truth, GRID),
            "south": (south_up(prob, 64)[0], *south_up(truth, 64))}.items():
        pred = write_raster(tmp_path / f"{name}_prob.tif", prob_, transform=grid)
        labels = write_raster(tmp_path / f"{name}_truth.tif", truth_, nodata=255,
                              transform=grid)
        preview = probability_figure(pred).axes[0].images[0].get_array()
        pictures.append((error_map(pred, labels, 0.5), np.ma.filled(preview, -1)))
    (errors_n, preview_n), (errors_s, preview_s) = pictures
    assert errors_n[0, 0].tolist() != errors_n[-1, 0].tolist()  # the picture has a north
    assert np.array_equal(errors_s, errors_n) and np.array_equal(preview_s, preview_n)


@pytest.mark.parametrize(("crs", "grid"), [
    ("EPSG:4326", from_origin(10.0, 60.001, 1e-5, 1e-5)),  # square degrees at 60 N
    (UTM47, from_origin(500000.0, 3450000.0, 0.5, 1.0)),  # a 0.5 m × 1 m product
])
def test_previews_keep_the_grounds_shape(tmp_path, monkeypatch, crs, grid) -> None:
    """The error overlay and the report's probability preview draw a pixel as long on the
    page as on the ground: a grid in degrees at 60 N (or of 0.5 m × 1 m pixels) was drawn
    with square pixels, every landslide twice as wide as it is."""
    pixel_x, pixel_y = pixel_size_m(CRS.from_user_input(crs), (grid.a, grid.e),
                                    (grid.c, grid.f))
    truth = np.zeros((40, 40), np.uint8)
    truth[10:20, 10:20] = 1
    pred = write_raster(tmp_path / "prob.tif", truth.astype(np.float32), crs=crs,
                        transform=grid)
    labels = write_raster(tmp_path / "truth.tif", truth, crs=crs, transform=grid, nodata=255)
    drawn: dict[str, Figure] = {}
    monkeypatch.setattr("slidemap.report.plots.save_png",
                        lambda figure, path: drawn.setdefault(path.name, figure) and path)
    confusion = BinaryConfusion(0.5)
    confusion.update(truth.astype(np.float32).ravel(), truth.ravel())
    write_evaluation_plots(tmp_path, confusion, pred, labels)
    for figure in (drawn["errors_overlay.png"], probability_figure(pred)):
        assert figure.axes[0].get_aspect() == pytest.approx(pixel_y / pixel_x, rel=1e-3)
    assert pixel_y / pixel_x == pytest.approx(2.0, rel=0.01)


# Machado, Oliveira & Fernandes (2009), full severity, on linear RGB
COLOUR_VISION = {"normal": np.eye(3),
                 "deuteranopia": np.array([[0.367322, 0.860646, -0.227968],
                                           [0.280085, 0.672501, 0.047413],
                                           [-0.011820, 0.042940, 0.968881]]),
                 "protanopia": np.array([[0.152286, 1.052583, -0.204868],
                                         [0.114503, 0.786281, 0.099216],
                                         [-0.003882, -0.048116, 1.051998]])}


def cielab(srgb: np.ndarray, vision: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of an 8-bit sRGB colour as seen with ``vision``."""
    c = srgb / 255
    linear = vision @ np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722],
                    [0.0193, 0.1192, 0.9505]]) @ np.clip(linear, 0, 1)
    f = np.cbrt(np.maximum(xyz / np.array([0.9505, 1.0, 1.089]), 0.008856))
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def test_error_colours_are_told_apart_with_any_colour_vision() -> None:
    """As drawn over the grey backdrop, the three outcomes differ by over 40 CIELAB units for
    a deuteranope or protanope too (green and red true and false positives: 11)."""
    for name, vision in COLOUR_VISION.items():
        seen = [cielab(0.35 * GREY + 0.65 * np.array(c, float), vision)
                for c in ERROR_COLOURS.values()]
        assert min(np.linalg.norm(a - b) for a, b in itertools.combinations(seen, 2)) > 40, name


def test_error_colours_stand_out_from_the_grey_backdrop_with_any_colour_vision() -> None:
    """Each outcome differs from the grey of the true negatives (the backdrop without imagery,
    and the hue of bare rock under it) by over 25 CIELAB units: the bluish green true positives
    were 4 from it for a deuteranope, so a correct map looked like one that found nothing."""
    for name, vision in COLOUR_VISION.items():
        grey = cielab(np.full(3, GREY, float), vision)
        for outcome, colour in ERROR_COLOURS.items():
            seen = cielab(0.35 * GREY + 0.65 * np.array(colour, float), vision)
            assert np.linalg.norm(seen - grey) > 25, (name, outcome)


def test_confusion_table_cells_are_tints_of_the_error_map_colours() -> None:
    """The report's TP, FP and FN cells lie between white and the overlay's colour of that
    outcome, so the table beside the picture is read in the picture's colours."""
    for key, name in (("tp", "true positive"), ("fp", "false positive"),
                      ("fn", "false negative")):
        found = re.search(rf"td\.{key} {{ background: #([0-9a-f]{{6}}); }}", REPORT_CSS)
        assert found, key
        tint = np.array([int(found.group(1)[i:i + 2], 16) for i in (0, 2, 4)], float)
        colour = np.array(ERROR_COLOURS[name], float)
        share = (255 - tint[colour < 255]) / (255 - colour[colour < 255])
        assert np.all(tint[colour == 255] == 255), (key, tint)
        assert np.ptp(share) < 0.02 and 0.1 < share.mean() < 0.5, (key, tint)


def evaluated(tiny_scene, tiny_model, tmp_path, run_cli) -> Path:
    out = tmp_path / "eval"
    code, err = run_cli("evaluate", tiny_scene["mask"], "--image", tiny_scene["image"],
                        "--dem", tiny_scene["dem"], "--model", tiny_model, "--out", out,
                        "--report")
    assert code == 0, err
    return out


def test_evaluate_writes_plots_and_report(tiny_scene, tiny_model, tmp_path, run_cli) -> None:
    out = evaluated(tiny_scene, tiny_model, tmp_path, run_cli)
    for name in ("pr_curve.png", "errors_overlay.png"):
        assert_png(out / name)
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    html = (out / "report.html").read_text()
    assert f"{metrics['f1']:.4f}" in html and f"FP {metrics['fp']:,}" in html
    assert html.count(PNG_URI) == 2
    assert_self_contained(html)


def test_prediction_only_evaluation_draws_on_grey(tiny_scene, tmp_path, run_cli) -> None:
    out = tmp_path / "eval"
    code, err = run_cli("evaluate", tiny_scene["mask"], "--prediction", tiny_scene["mask"],
                        "--out", out)
    assert code == 0, err
    assert_png(out / "errors_overlay.png") and assert_png(out / "pr_curve.png")
    code, err = run_cli("evaluate", tiny_scene["mask"], "--prediction", tiny_scene["mask"],
                        "--report")
    assert code == 2 and "--report needs --out" in err


def test_predict_report_maps_the_scene_with_its_provenance(tiny_scene, tiny_model, tmp_path,
                                                            run_cli) -> None:
    out = tmp_path / "pred"
    code, err = run_cli("predict", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        tiny_model, "--tile", 48, "--overlap", 16, "--out", out, "--report")
    assert code == 0, err
    html = (out / "report.html").read_text()
    assert "<title>Landslide map of scene</title>" in html and "total area" in html
    assert html.count(PNG_URI) == 2 and html.count(JPEG_URI) == 1  # histogram, probability; map
    assert f"imagery: {tiny_scene['image'].name}" in html  # the input known to predict
    assert str(tiny_model) in html and "slidemap predict" in html
    assert "unmeasured for this model" in html  # the tiny model's sidecar has no card
    assert_self_contained(html)


def test_report_refuses_a_folder_with_nothing_to_report(tmp_path, run_cli) -> None:
    code, err = run_cli("report", tmp_path)
    assert code == 1 and "has no history.csv" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SlidemapError, match="not a folder"):
        build_report(tmp_path / "missing")


def test_report_never_writes_over_what_it_reads(mapped, run_cli) -> None:
    before = mapped["prob"].read_bytes()
    code, err = run_cli("report", mapped["folder"], "--out", mapped["prob"])
    assert code == 2 and "is not an .html file" in err and mapped["prob"].read_bytes() == before


# Test-only probe appended to a copy of the report: the report itself has no script. After load
# it records each image's decoded width, which --dump-dom then prints with the DOM.
PROBE = """<script>addEventListener("load", () => document.body.setAttribute("data-widths",
  [...document.images].map(i => i.complete ? i.naturalWidth : 0).join(",")));</script>"""


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless, sandbox off (root in a container), nothing fetched or synced, fresh profile."""
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
         f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=False)


def test_report_opens_in_headless_chromium(tiny_scene, tiny_model, tmp_path, run_cli) -> None:
    """The bar: a browser shows the report, every image decodes, nothing lands in the console.

    The screenshot is kept for a person: set SLIDEMAP_ARTIFACTS=DIR to get it as DIR/report.png.
    """
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)")
    report = evaluated(tiny_scene, tiny_model, tmp_path, run_cli) / "report.html"
    shot = tmp_path / "report.png"
    shown = chromium(tmp_path / "profile-shot", "--enable-logging=stderr", "--v=0",
                     f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri())
    assert shown.returncode == 0 and shot.exists(), shown.stderr[-2000:]
    assert not [line for line in shown.stderr.splitlines() if ":CONSOLE" in line]
    with Image.open(shot) as png:
        pixels = np.asarray(png.convert("RGB")).astype(np.int32)
    assert pixels.shape == (2000, 1200, 3)
    colours = (pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2]
    background = (colours == colours[-1, -1]).mean()
    assert background < 0.9 and np.unique(colours).size > 100  # text, tables and plots drawn
    if os.environ.get("SLIDEMAP_ARTIFACTS"):
        artifacts = Path(os.environ["SLIDEMAP_ARTIFACTS"])
        artifacts.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, artifacts / "report.png")

    html = report.read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"))
    dumped = chromium(tmp_path / "profile-dom", "--virtual-time-budget=5000", "--dump-dom",
                      probe.as_uri())
    found = re.search(r'data-widths="([^"]*)"', dumped.stdout)
    assert found, dumped.stderr[-2000:]
    widths = [int(w) for w in found.group(1).split(",")]
    assert len(widths) == html.count("<img") == 2 and min(widths) > 100


# -- the map of a prediction -------------------------------------------------------------------


@pytest.fixture
def mapped(tmp_path: Path) -> dict[str, Path]:
    """A prediction folder written by hand: a 120×160 scene whose left 20 columns are nodata,
    a large and a small landslide, a single-pixel speck, and the inventory slidemap writes."""
    image = np.zeros((3, 120, 160), np.uint8)
    image[:, :, 20:] = np.arange(140, dtype=np.uint8)[None, None, :] + 60
    mask = np.zeros((120, 160), np.uint8)
    mask[20:60, 40:100] = 1
    mask[80:90, 120:130] = 1
    mask[100, 30] = 1
    mask[:, :20] = 255
    prob = np.where(mask == 1, 0.9, 0.1).astype(np.float32)
    prob[mask == 255] = np.nan
    folder = tmp_path / "pred"
    folder.mkdir()
    paths = {"image": write_raster(tmp_path / "scene.tif", image, nodata=0),
             "prob": write_raster(folder / "scene_prob.tif", prob, nodata=float("nan")),
             "mask": write_raster(folder / "scene_mask.tif", mask, nodata=255),
             "inventory": folder / "scene_landslides.gpkg", "folder": folder}
    write_inventory(build_inventory(paths["mask"], paths["prob"]), paths["inventory"])
    return paths


def map_png(html: str) -> np.ndarray:
    """The decoded map image of a report."""
    found = re.search(r"<figure class='map'><img src='data:image/jpeg;base64,([^']+)'", html)
    assert found, "no map in the report"
    with Image.open(io.BytesIO(base64.b64decode(found.group(1)))) as png:
        return np.asarray(png.convert("RGB")).astype(np.int32)


def near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    return int((np.abs(pixels - np.array(colour)).max(axis=-1) <= tolerance).sum())


def test_prediction_report_numbers_the_map_and_the_table_alike(mapped) -> None:
    before = {p: p.stat().st_mtime_ns for p in mapped["folder"].iterdir()}
    html = build_report(mapped["folder"], provenance=Provenance(image=str(mapped["image"]))
                        ).read_text()
    after = {p: p.stat().st_mtime_ns for p in mapped["folder"].iterdir()}
    assert after == {**before, mapped["folder"] / "report.html": ANY}  # nothing else touched
    assert "<h1>Landslide map of scene</h1>" in html and "pred" not in html.split("</h1>")[0]
    assert html.count(PNG_URI) == 2 and html.count(JPEG_URI) == 1 and "imagery: scene.tif" in html
    # 0.5 m pixels: 60×40 px = 600 m², 10×10 px = 25 m², the speck 0.25 m²: largest first
    rows = re.findall(r"<tr><td class='num'>(\d+)</td><td class='num'>([^<]+)</td>", html)
    assert rows == [("1", "600 m²"), ("2", "25 m²"), ("3", "&lt; 1 m²")]
    assert "WGS 84 / UTM zone 47N (EPSG:32647)" in html and "603 m² (0.06 ha)" not in html
    assert "625 m² (0.06 ha)" in html  # the total, in the one area format
    assert "landslides of a single raster pixel</th><td class='num'>1<" in html
    pixels = map_png(html)
    assert near(pixels, (255, 224, 0), 30) > 200  # the outlines, in yellow over the image
    assert near(pixels, (215, 215, 215), 8) + near(pixels, (150, 150, 150), 8) > 500  # nodata
    assert "unmeasured" not in html and "not recorded in its outputs" in html
    assert_self_contained(html)


def test_prediction_report_without_landslides(mapped) -> None:
    """Nothing mapped is said, on the map and in the table, and nothing breaks."""
    with rasterio.open(mapped["mask"], "r+") as ds:
        ds.write(np.where(ds.read(1) == 1, 0, ds.read(1)), 1)
    mapped["inventory"].unlink()
    write_inventory(build_inventory(mapped["mask"], mapped["prob"]), mapped["inventory"])
    html = build_report(mapped["folder"], interactive=True).read_text()
    assert "no landslide mapped." in html and "No landslide was mapped." in html
    assert "<th>landslides</th><td class='num'>0</td>" in html


def test_prediction_report_of_one_landslide_says_number_1(mapped) -> None:
    """One landslide: the map's caption said 'all 1 landslide outlines; numbers 1–1 are the
    ranks in the table below'."""
    with rasterio.open(mapped["mask"], "r+") as ds:
        mask = ds.read(1)
        mask[60:, 20:] = np.where(mask[60:, 20:] == 1, 0, mask[60:, 20:])  # the large one left
        ds.write(mask, 1)
    mapped["inventory"].unlink()
    write_inventory(build_inventory(mapped["mask"], mapped["prob"]), mapped["inventory"])
    html = build_report(mapped["folder"]).read_text()
    captions = set(re.findall(r"Map of scene \([^)]*\): ([^.]*)\.", html))
    assert captions == {"the 1 landslide outline; number 1 is its rank in the table below"}


def test_report_of_a_geojson_inventory(mapped) -> None:
    """``predict --format geojson`` alone: the same table from the GeoJSON file."""
    geojson = mapped["inventory"].with_suffix(".geojson")
    write_inventory(build_inventory(mapped["mask"], mapped["prob"]), geojson)
    mapped["inventory"].unlink()
    html = build_report(mapped["folder"]).read_text()
    rows = re.findall(r"<tr><td class='num'>(\d+)</td><td class='num'>([^<]+)</td>", html)
    assert rows == [("1", "600 m²"), ("2", "25 m²"), ("3", "&lt; 1 m²")]


def test_map_figure_has_numbers_scale_bar_north_arrow_and_crs(mapped) -> None:
    grid = map_grid(mapped["mask"])
    assert grid.valid.shape == (120, 160) and not grid.valid[:, :20].any()
    square = shapely.box(469230.0, 3446170.0, 469250.0, 3446190.0)
    figure = map_figure(np.zeros((120, 160, 3), np.uint8), grid,
                        Outlines([square], [(1, 469240.0, 3446180.0)]), "scene", "imagery")
    texts = {t.get_text() for t in figure.findobj(Text)}
    assert {"1", "N", "20 m"} <= texts  # 80 m wide: the bar is the nice length under a quarter
    assert any("EPSG:32647" in t for t in texts) and any("3,446,1" in t for t in texts)
    lines = [c for c in figure.axes[0].collections if isinstance(c, LineCollection)]
    assert len(lines) == 2 and len(lines[1].get_segments()) == 1  # halo + outline of one ring
    assert nice_length(740) == 500 and nice_length(0.3) == 0.2


def test_report_reads_provenance_tags_and_the_model_card(mapped, tiny_model) -> None:
    with rasterio.open(mapped["prob"], "r+") as ds:
        ds.update_tags(SLIDEMAP_MODEL=str(tiny_model), SLIDEMAP_THRESHOLD="0.42",
                       SLIDEMAP_VERSION="9.9.9", SLIDEMAP_IMAGE=str(mapped["image"]))
    html = build_report(mapped["folder"]).read_text()
    assert "imagery: scene.tif" in html and "9.9.9" in html
    assert "<th>threshold</th><td>0.42</td>" in html and "unmeasured for this model" in html
    rewrite_sidecar(tiny_model, card={"new_ground": "F1 0.5 on the far valley (run.sh)."})
    assert accuracy_caveat((str(tiny_model),)) == [("tiny.safetensors",
                                                    "F1 0.5 on the far valley (run.sh).")]


def test_report_says_a_model_it_cannot_find_is_missing_not_without_a_card(tmp_path) -> None:
    """A map folder read on another machine (or after the model moved) named a model whose
    sidecar is not there, and the report said that sidecar carried no card."""
    missing = tmp_path / "elsewhere" / "model.safetensors"
    [(name, said)] = accuracy_caveat((str(missing),))
    assert name == "model.safetensors"
    assert "not found from here" in said and str(missing.with_suffix(".json")) in said
    assert "unmeasured" not in said and "carries no card" not in said


def test_report_of_an_adapted_map_says_it_was_adapted(mapped, tiny_model) -> None:
    """A map made by predict --adapt came from a copy of the model fine-tuned on the scene, yet
    the report named only the model file, its digest and its card. It now says how the model
    adapted and that the card speaks of the model before adaptation; an adaptation that
    trained no window is said to have left the map unadapted."""
    trained = {"rounds": [{"round": 1}, {"round": 2}], "windows": 24, "trained": True,
               "seconds": 3.5, "stopped_by": "windows"}
    with rasterio.open(mapped["prob"], "r+") as ds:
        ds.update_tags(SLIDEMAP_MODEL=str(tiny_model), SLIDEMAP_ADAPTED=json.dumps(trained),
                       SLIDEMAP_ADAPTED_MODEL="/maps/adapted.safetensors")
    html = build_report(mapped["folder"]).read_text()
    assert ("<th>adapted to the scene</th><td>24 training windows in 2 rounds, 3.5 s (stopped "
            "by windows); saved as /maps/adapted.safetensors</td>") in html
    assert "the card speaks of the model before adaptation" in html
    untrained = {**trained, "rounds": [], "windows": 0, "trained": False, "stopped_by": "time"}
    with rasterio.open(mapped["prob"], "r+") as ds:
        ds.update_tags(SLIDEMAP_ADAPTED=json.dumps(untrained))
    html = build_report(mapped["folder"], overwrite=True).read_text()
    assert "no window trained (stopped by time): the map is the model&#x27;s as it was" in html
    assert "the card speaks of the model before adaptation" not in html


def test_report_of_a_prediction_in_degrees_gives_the_ground_mapped(tmp_path) -> None:
    """pixel_size_m measures degrees, but the report took no pixel area for a geographic
    CRS: an EPSG:4326 scene's 'ground mapped' row was missing. It is the valid pixels times
    a pixel's ground area at the centre."""
    mask = np.zeros((30, 40), np.uint8)
    mask[:, :10] = 255  # no data
    mask[10:20, 15:25] = 1
    grid = from_origin(98.7, 31.1, 1e-5, 1e-5)
    folder = tmp_path / "pred"
    folder.mkdir()
    paths = [write_raster(folder / "s_mask.tif", mask, crs="EPSG:4326", transform=grid,
                          nodata=255),
             write_raster(folder / "s_prob.tif", (mask == 1).astype(np.float32),
                          crs="EPSG:4326", transform=grid, nodata=float("nan"))]
    write_inventory(build_inventory(*paths), folder / "s_landslides.gpkg")
    html = build_report(folder).read_text()
    dx, dy = pixel_size_m(CRS.from_epsg(4326), (1e-5, 1e-5), (98.7 + 20e-5, 31.1 - 15e-5))
    assert (f"<th>ground mapped (valid pixels)</th><td class='num'>"
            f"{area(30 * 30 * dx * dy)}</td>"
            in html)


def test_map_in_degrees_is_drawn_to_scale(tmp_path) -> None:
    """Longitude/latitude grids: a degree of longitude drawn shorter, the bar in metres."""
    mask = write_raster(tmp_path / "m.tif", np.zeros((60, 80), np.uint8), crs="EPSG:4326",
                        transform=from_origin(99.0, 60.0, 1e-4, 1e-4), nodata=255)
    grid = map_grid(mask)
    figure = map_figure(np.zeros((60, 80, 3), np.uint8), grid, Outlines([], []), "s", "i")
    # M / (N cos φ) on the WGS 84 ellipsoid at the centre (59.997° N): a sphere gives 2.0
    assert figure.axes[0].get_aspect() == pytest.approx(1.9965, rel=1e-4)
    texts = {t.get_text() for t in figure.findobj(Text)}
    assert "100 m" in texts and any("longitude (°)" in t for t in texts)  # 8e-3° ≈ 445 m wide


def test_map_of_oblong_pixels_is_shaped_as_its_ground(tmp_path) -> None:
    """50 m × 50 m of ground in 0.5 m × 1 m pixels (100 columns, 50 rows) takes the figure
    of the same ground in square pixels (it was sized as a 2:1 strip, the map drawn in its
    middle half)."""
    figures = []
    for name, shape, dy in (("square", (100, 100), 0.5), ("oblong", (50, 100), 1.0)):
        mask = write_raster(tmp_path / f"{name}.tif", np.zeros(shape, np.uint8), nodata=255,
                            transform=from_origin(469200.0, 3446200.0, 0.5, dy))
        figures.append(map_figure(np.zeros((*shape, 3), np.uint8), map_grid(mask),
                                  Outlines([], []), "s", "i"))
    assert figures[1].get_size_inches() == pytest.approx(figures[0].get_size_inches())


def scale_bar(figure) -> tuple[str, float]:
    """The map's scale bar: its label and its length in map (CRS) units."""
    bar = next(a for a in figure.axes[0].artists if isinstance(a, AnchoredSizeBar))
    return bar.txt_label.get_text(), bar.size_bar.get_children()[0].get_width()


@pytest.mark.parametrize("shape", [(60, 3000), (3000, 60)])
def test_coordinate_labels_of_a_long_strip_do_not_overlap(tmp_path, shape) -> None:
    """A map of a 1500 m × 30 m strip (or a tall one) gave its short side six coordinates on
    a few millimetres, written over each other into one smudge; each axis now has only as
    many as fit."""
    mask = write_raster(tmp_path / "m.tif", np.zeros(shape, np.uint8), nodata=255,
                        transform=from_origin(469200.0, 3446200.0, 0.5, 0.5))
    grid = map_grid(mask)
    figure = map_figure(np.zeros((*grid.shape, 3), np.uint8), grid, Outlines([], []), "s", "i")
    figure.canvas.draw()
    ax = figure.axes[0]
    long_side = ax.xaxis if shape[1] > shape[0] else ax.yaxis
    for axis in (ax.xaxis, ax.yaxis):
        boxes = [label.get_window_extent() for label in axis.get_ticklabels()
                 if label.get_visible() and label.get_text()]
        assert len(boxes) >= 3 or axis is not long_side  # the long side keeps its coordinates
        assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))


def test_scale_bar_and_north_arrow_cover_no_number_of_a_flat_strip(tmp_path) -> None:
    """A 4000 × 120 px scene is drawn a few millimetres tall: the scale bar inside its lower
    left corner was taller than the map and covered slide 1's number and outline, as the north
    arrow would slide 2's in the upper right. Both are drawn outside the map."""
    mask = write_raster(tmp_path / "m.tif", np.zeros((120, 4000), np.uint8), nodata=255)
    grid = map_grid(mask)
    left, right, bottom, top = grid.extent
    labels = [(1, left + 170.0, bottom + 15.0), (2, right - 10.0, top - 10.0)]
    figure = map_figure(np.zeros((*grid.shape, 3), np.uint8), grid,
                        Outlines([shapely.Point(x, y).buffer(8) for _, x, y in labels], labels),
                        "s", "i")
    figure.canvas.draw()
    ax = figure.axes[0]
    numbers = [t.get_window_extent() for t in ax.texts if t.get_text() in ("1", "2")]
    bar = next(a for a in ax.artists if isinstance(a, AnchoredSizeBar)).get_window_extent()
    arrow = [a.get_window_extent() for a in ax.texts if a.get_text() in ("", "N")]
    assert len(numbers) == 2 and len(arrow) == 2
    for box in (bar, *arrow):
        assert not any(box.overlaps(number) for number in numbers)
        assert box.y0 >= ax.bbox.y1 or box.x0 >= ax.bbox.x1  # over no part of the map


def test_scale_bar_is_ground_metres_in_web_mercator(tmp_path) -> None:
    """At 60° N a Web Mercator metre is half a ground metre: 100 m of ground is 200 map units
    (the bar said 200 m over them, twice the ground)."""
    x, y = transform("EPSG:4326", "EPSG:3857", [10.0], [60.0])
    mask = write_raster(tmp_path / "m.tif", np.zeros((60, 100), np.uint8), crs="EPSG:3857",
                        transform=from_origin(x[0], y[0] + 300, 10.0, 10.0), nodata=255)
    figure = map_figure(np.zeros((60, 100, 3), np.uint8), map_grid(mask), Outlines([], []),
                        "s", "i")
    label, units = scale_bar(figure)
    assert label == "100 m" and units == pytest.approx(200.0, rel=5e-3)  # 1 / cos(60°)
    utm = map_figure(np.zeros((60, 100, 3), np.uint8), map_grid(write_raster(
        tmp_path / "u.tif", np.zeros((60, 100), np.uint8), nodata=255)), Outlines([], []),
        "s", "i")
    assert scale_bar(utm)[0] == "10 m" and scale_bar(utm)[1] == pytest.approx(10.0, rel=3e-3)


def test_provenance_tags_as_predict_writes_them() -> None:
    """``SLIDEMAP_*`` tags, models and digests ``;``-separated; unknown or bad values skipped."""
    known = from_tags({"model": "a.safetensors;b.safetensors", "model_sha256": "1;2",
                       "threshold": "0.35", "dem": "dsm.tif", "created": "2026-01-02T03:04Z",
                       "command": "slidemap predict x.tif", "other": "ignored"})
    assert known == Provenance(dem="dsm.tif", models=("a.safetensors", "b.safetensors"),
                               model_sha256=("1", "2"), threshold=0.35,
                               command="slidemap predict x.tif", created="2026-01-02T03:04Z")
    assert from_tags({"threshold": "high"}) == Provenance()
    assert Provenance(image="given.tif").merged(known).image == "given.tif"


def test_probability_backdrop_reads_a_scaled_uint8_probability(mapped, tmp_path) -> None:
    """A uint8 probability (p × 254, scale 1/254) is drawn as the float one is."""
    prob = np.where(np.arange(160) < 80, 254, 0).astype(np.uint8)[None].repeat(120, axis=0)
    path = write_raster(tmp_path / "prob_u8.tif", prob, nodata=255)
    with rasterio.open(path, "r+") as ds:
        ds.scales, ds.offsets = (1 / 254,), (0.0,)
    grey = probability_backdrop(path, map_grid(mapped["mask"]))[..., 0]
    assert grey[0, 0] == 65 and grey[0, -1] == 235  # likely dark, unlikely light


def test_size_histogram_is_log_binned() -> None:
    """A hundred one-pixel specks take one bar; the real slides keep theirs."""
    areas = np.array([0.25] * 100 + [30.0, 400.0, 5000.0, 60000.0])
    ax = size_histogram_figure(areas, 0.25).axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert ax.get_xscale() == "log" and sorted(h for h in heights if h)[-5:] == [1, 1, 1, 1, 100]
    assert ax.get_title() == "landslide sizes (104 landslides)"
    assert size_histogram_figure(np.array([30.0]), 0.25).axes[0].get_title() \
        == "landslide sizes (1 landslide)"
    empty = size_histogram_figure(np.zeros(0), 0.25).axes[0]
    # no axis numbers ("0.2 landslides" of 0-1 m²) where nothing was mapped
    assert list(empty.get_xticks()) == [] and list(empty.get_yticks()) == []


def test_prediction_report_opens_in_headless_chromium(mapped, tmp_path) -> None:
    """The static map shows with its outlines, and the interactive one draws every outline and
    number offline, without a console message; the screenshot is kept as DIR/report-map.png
    with SLIDEMAP_ARTIFACTS=DIR for a person to look at."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)")
    report = build_report(mapped["folder"], provenance=Provenance(image=str(mapped["image"])),
                          interactive=True)
    html = report.read_text()
    assert not re.search(r"<link|src\s*=\s*['\"]https?:", html)  # nothing to fetch
    shot = tmp_path / "map.png"
    shown = chromium(tmp_path / "profile-map", "--enable-logging=stderr", "--v=0",
                     "--virtual-time-budget=5000", f"--screenshot={shot}",
                     "--window-size=1200,1400", report.as_uri())
    assert shown.returncode == 0 and shot.exists(), shown.stderr[-2000:]
    assert not [line for line in shown.stderr.splitlines() if ":CONSOLE" in line]
    with Image.open(shot) as png:
        pixels = np.asarray(png.convert("RGB")).astype(np.int32)
    assert near(pixels, (255, 224, 0), 30) > 100  # the outlines, as the browser drew them
    if os.environ.get("SLIDEMAP_ARTIFACTS"):
        shutil.copy(shot, Path(os.environ["SLIDEMAP_ARTIFACTS"]) / "report-map.png")
    dom = chromium(tmp_path / "profile-leaflet", "--virtual-time-budget=5000", "--dump-dom",
                   report.as_uri()).stdout
    assert dom.count('class="leaflet-interactive"') == 3  # one path per landslide
    assert len(re.findall(r'class="[^"]*slide-rank', dom)) == 3
    assert "leaflet-image-layer" in dom
