"""Plots and the self-contained HTML report, down to opening it in a real (headless) browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import write_raster
from PIL import Image

from slidemap.errors import SlidemapError
from slidemap.evaluation.metrics import BinaryConfusion
from slidemap.report import build_report, plot_training_curves
from slidemap.report.plots import ERROR_COLOURS, GREY, error_map, pr_curve_figure, precision_recall

CHROMIUM = Path("/usr/bin/chromium")
PNG_URI = "data:image/png;base64,"
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
    assert links and all(link.startswith(PNG_URI) for link in links)
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
    assert "Training run" in html and "0.5294" in html and "best val f1" in html
    assert html.count(PNG_URI) == 1
    assert_self_contained(html)


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


def test_predict_report_summarises_the_inventory(tiny_scene, tiny_model, tmp_path,
                                                 run_cli) -> None:
    out = tmp_path / "pred"
    code, err = run_cli("predict", tiny_scene["image"], "--dem", tiny_scene["dem"], "--model",
                        tiny_model, "--tile", 48, "--overlap", 16, "--out", out, "--report")
    assert code == 0, err
    html = (out / "report.html").read_text()
    assert "Landslide inventory: scene_landslides.gpkg" in html and "total area" in html
    assert html.count(PNG_URI) == 2  # size histogram and probability preview
    assert_self_contained(html)


def test_report_refuses_a_folder_with_nothing_to_report(tmp_path, run_cli) -> None:
    code, err = run_cli("report", tmp_path)
    assert code == 2 and "has no history.csv" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SlidemapError, match="not a folder"):
        build_report(tmp_path / "missing")


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
