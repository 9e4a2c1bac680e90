"""How fast a scene is mapped: the model alone against the whole pipeline, and peak memory.

*Model-only* times the model as configured (the ``Predictor``: normalisation, every member,
scale and TTA variant) on windows read beforehand (a sample of the scene's windows that hold
data), scaled to the windows the scene needs. *End-to-end* times
scene prediction as ``slidemap predict`` runs it: read, normalise, model, blend, write both
GeoTIFFs; the inventory that follows is timed on its own (``inventory_s``), and the peak RSS
covers both. Both are in megapixels of the scene (native pixels) per second, so their ratio is the
share of the wall time the model gets and the rest is what the pipeline costs. The CPU seconds of
both are given too: on a machine shared with other work, wall times stretch but CPU times hold;
``model_thread_cpu_s`` is the own CPU of the thread that runs the model end-to-end (its scale-1
passes, normalising, the bookkeeping between windows): a floor under the end-to-end wall time
that no helper thread can lower.
"""

from __future__ import annotations

import contextlib
import resource
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import rasterio
from rasterio.windows import Window

from slidemap.data.channels import InputSpec
from slidemap.data.names import DatasetName
from slidemap.data.scene import Scene
from slidemap.errors import SlidemapError
from slidemap.infer.budget import MemoryBudget
from slidemap.infer.ensemble import Predictor
from slidemap.infer.predict import (
    PredictOptions,
    build_predictor,
    predict_scene,
    working_factor,
)
from slidemap.infer.stream import Grid, check_terrain_halo, plan_blocks, read_window
from slidemap.infer.vectorize import inventory_defaults, slide_batches, write_inventories
from slidemap.io.rasters import RasterFormat, read_probability

RSS_PERIOD_S = 0.05


def bench_scene(image: DatasetName, dem: DatasetName | None, models: list[Path],
                options: PredictOptions, sample: int = 32, agreement: bool = False) -> dict:
    """Model-only and end-to-end throughput of ``options`` on ``image``, and peak RSS.

    With ``agreement`` the scene is also predicted in plain torch fp32 and the two probability
    maps compared: share of valid pixels whose mask agrees, max and mean |Δp|, both mapped again
    as float32 (untimed), so uint8 steps do not stand in for the backends' difference. The
    inventory is the one ``predict`` writes (its default minimum area and simplification).
    """
    started = time.perf_counter()
    predictor = build_predictor(models, options)
    load_s = time.perf_counter() - started
    options = options.resolve(predictor.defaults)
    with Scene(image, dem=dem) as scene:
        factor = working_factor(scene, predictor.spec, image)  # its bands and DEM checked
        assert options.tile is not None and options.overlap is not None  # resolved above
        grid = Grid.of(scene.height, scene.width, options.tile, options.overlap, factor)
        budget = MemoryBudget.of(options.memory_mb)
        planned = plan_blocks(grid, len(predictor.spec.channels), budget)
        check_terrain_halo(scene, predictor.spec, factor,  # before the sample is read
                           (planned.band_rows, planned.window_width), budget,
                           memory_option=False)
        check_sample(grid, len(predictor.spec.channels), sample, budget)
        batches = _sample_batches(scene, predictor.spec, grid, sample, options.batch_size)
    first_s, per_window, cpu_per_window = _time_model(predictor, batches)
    del batches  # not held while the scene is mapped
    with tempfile.TemporaryDirectory(prefix="slidemap-bench-") as tmp:
        paths = (Path(tmp) / "prob.tif", Path(tmp) / "mask.tif")
        with peak_rss() as peak:
            started, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
            counts = predict_scene(predictor, image, dem, *paths, options)
            e2e_s, e2e_cpu = time.perf_counter() - started, time.process_time() - cpu
            model_thread_cpu = time.thread_time() - own
            started = time.perf_counter()
            min_area, simplify = inventory_defaults(counts["working_pixel_m"])
            inventory = write_inventories(slide_batches(paths[1], paths[0], min_area, simplify,
                                                        dem=dem, budget=budget),
                                          [Path(tmp) / "landslides.gpkg"])
            inventory_s = time.perf_counter() - started
        result = {
            "image": str(image), "size": [grid.height, grid.width], "factor": factor,
            "backend": options.backend, "precision": predictor.precision,
            "compile": options.compile, "batch_size": options.batch_size, "tile": options.tile,
            "overlap": options.overlap, "scales": list(predictor.scales),
            "threshold": predictor.threshold, "memory_mb": budget.megabytes,
            "column_blocks": len(planned.blocks),
            "windows": counts["windows"], "windows_in_grid": grid.window_count,
            "landslides": inventory["landslides"], "inventory_s": round(inventory_s, 2),
            "load_s": round(load_s, 2), "warm_up_s": round(first_s, 2),
            "model_s_per_window": round(per_window, 4), "end_to_end_s": round(e2e_s, 2),
            "model_cpu_s": round(cpu_per_window * counts["windows"], 2),
            "end_to_end_cpu_s": round(e2e_cpu, 2),
            "model_thread_cpu_s": round(model_thread_cpu, 2),
        }
        megapixels = grid.height * grid.width / 1e6
        model_s = per_window * counts["windows"]
        result["model_only_mpx_s"] = round(megapixels / model_s, 2) if model_s else None
        result["end_to_end_mpx_s"] = round(megapixels / e2e_s, 2)
        result["end_to_end_share"] = round(model_s / e2e_s, 3)
        result["peak_rss_mb"] = round(peak["rss"] / 2**20)
        result["process_peak_rss_mb"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        if agreement:
            reference = replace(options, backend="torch", precision="fp32", compile=False,
                                workers=0, scheduler=None)
            floats = RasterFormat("float32")
            ours = (Path(tmp) / "float_prob.tif", Path(tmp) / "float_mask.tif")
            ref_paths = (Path(tmp) / "ref_prob.tif", Path(tmp) / "ref_mask.tif")
            predict_scene(predictor, image, dem, *ours, options, fmt=floats)
            predict_scene(build_predictor(models, reference), image, dem, *ref_paths, reference,
                          fmt=floats)
            result["agreement_vs_fp32"] = compare_maps(ours[0], ref_paths[0],
                                                       predictor.threshold)
    return result


def check_sample(grid: Grid, channels: int, sample: int, budget: MemoryBudget) -> None:
    """Refuse, before any window is read, a ``sample`` whose windows (held until they are
    timed) would not fit ``budget``: 100 000 windows of a large scene were read one after the
    other until memory ran out."""
    per_window = ((grid.band_rows // grid.factor + 1) * (grid.window_width // grid.factor + 1)
                  * (4 * channels + 1))  # float32 channels and a validity byte
    need = min(sample, grid.window_count) * per_window
    if need > budget.bytes:
        raise SlidemapError(
            f"--sample {sample} windows of {grid.size // grid.factor} working px would hold "
            f"about {need / 2**20:,.0f} MB, more than the memory budget of {budget.megabytes} "
            f"MB: pass --sample {max(1, budget.bytes // per_window)} or fewer, or a smaller "
            "--tile")


def _sample_batches(scene: Scene, spec: InputSpec, grid: Grid, sample: int, batch_size: int
                    ) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    """Raw inputs and validity of up to ``sample`` windows with data, spread over the scene, in
    batches of ``batch_size``: what the model's thread is handed in the pipeline."""
    windows = [w for row in grid.rows for w in grid.band_windows(row)]
    order = np.unique(np.linspace(0, len(windows) - 1, min(len(windows), 8 * sample)).round())
    raw: list[np.ndarray] = []
    valid: list[np.ndarray] = []
    for index in order.astype(int):
        if len(raw) == sample:
            break
        read = read_window(scene, spec, grid, windows[index])
        if read is not None:
            raw.append(read.raw)
            valid.append(read.valid)
    return [(raw[start:start + batch_size], valid[start:start + batch_size])
            for start in range(0, len(raw), batch_size)]


def _time_model(predictor: Predictor, batches: list[tuple[list[np.ndarray], list[np.ndarray]]]
                ) -> tuple[float, float, float]:
    """(seconds of the warm-up: one batch of each shape, compiling included; wall and CPU
    seconds per window over all batches after it). The model is the ``Predictor`` as
    configured: normalisation, every member, scale and TTA variant, as the pipeline's model
    thread runs it (the other scales on a spare core where there is one)."""
    if not batches:
        return 0.0, 0.0, 0.0
    started = time.perf_counter()
    shapes: dict[tuple[int, ...], tuple[list[np.ndarray], list[np.ndarray]]] = {}
    for raw, valid in batches:
        shapes.setdefault((len(raw), *raw[0].shape), (raw, valid))
    for raw, valid in shapes.values():
        predictor(raw, valid)
    first = time.perf_counter() - started
    started, cpu = time.perf_counter(), time.process_time()
    for raw, valid in batches:
        predictor(raw, valid)
    windows = sum(len(raw) for raw, _ in batches)
    return (first, (time.perf_counter() - started) / windows,
            (time.process_time() - cpu) / windows)


@contextlib.contextmanager
def peak_rss() -> Iterator[dict[str, int]]:
    """Samples this process's RSS in a thread; ``peak["rss"]`` holds the highest seen."""
    process = psutil.Process()
    peak = {"rss": process.memory_info().rss}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(RSS_PERIOD_S):
            peak["rss"] = max(peak["rss"], process.memory_info().rss)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()
        peak["rss"] = max(peak["rss"], process.memory_info().rss)


def compare_maps(prob: Path, reference: Path, threshold: float, rows: int = 1024) -> dict:
    """Agreement of two probability GeoTIFFs (decoded, whichever type they store) on the pixels
    valid in both, strip by strip."""
    agree = valid_total = 0
    max_diff = total_diff = 0.0
    with rasterio.open(prob) as a, rasterio.open(reference) as b:
        for top in range(0, a.height, rows):
            window = Window(0, top, a.width, min(rows, a.height - top))
            pa, pb = read_probability(a, window), read_probability(b, window)
            valid = np.isfinite(pa) & np.isfinite(pb)
            diff = np.abs(pa[valid] - pb[valid])
            agree += int(((pa[valid] >= threshold) == (pb[valid] >= threshold)).sum())
            valid_total += int(valid.sum())
            if diff.size:
                max_diff = max(max_diff, float(diff.max()))
                total_diff += float(diff.sum(dtype=np.float64))
    count = max(valid_total, 1)
    return {"pixels": valid_total, "mask_agreement": agree / count,
            "max_abs_diff": max_diff, "mean_abs_diff": total_diff / count}
