"""Scale-out: the bands of a scene predicted on Dask workers, assembled and written here.

Each worker loads the model files once (cached per process) and opens the rasters itself, so the
files must be readable at the same paths on every worker (a shared filesystem). A band comes back
as the working-resolution probabilities of its windows (a sixteenth of the native pixels for a
2 m model on 0.5 m imagery), and the driver blends and sums bands in row order exactly as one
process does (``slidemap.infer.stream``), so the outputs are the same. At most two
bands per worker thread are in flight, and no more than the memory budget holds of them (those
finished wait on the workers until their turn comes, on this machine for ``--workers``): memory
stays bounded on both sides, whatever the cluster's size.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Generator, Iterator
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from slidemap.data.names import DatasetName, absolute_name
from slidemap.data.normalization import BandStats
from slidemap.data.scene import Scene
from slidemap.errors import SlidemapError, SlidemapWarning, silenced
from slidemap.extras import require
from slidemap.infer.budget import MemoryBudget
from slidemap.infer.ensemble import Predictor
from slidemap.infer.options import PredictOptions
from slidemap.infer.stream import (
    Grid,
    PredictedBand,
    band_bytes,
    bounded_gdal_cache,
    in_order,
    infer_band,
    local_bands,
    read_band,
)
from slidemap.io.modelfile import load_model

if TYPE_CHECKING:
    from distributed import Client

BANDS_PER_THREAD = 2
CONNECT_TIMEOUT_S = 10
SAME_FILES = " (the workers must read the files at the paths this machine reads them at)"


@dataclass(frozen=True)
class BandJob:
    """Everything a worker needs to predict any band of one scene (hashable: cache key)."""

    image: str
    dem: str | None
    models: tuple[str, ...]
    tta: bool
    precision: str
    backend: str
    compile: bool
    scales: tuple[float, ...]
    batch_size: int
    stats: tuple[tuple[float, ...], tuple[float, ...]] | None  # separated normalisation
    grid: Grid


def band_source(predictor: Predictor, options: PredictOptions, image: DatasetName,
                dem: DatasetName | None,
                grid: Grid) -> Generator[PredictedBand, None, None]:
    """The scene's bands in row order: from this process, or from Dask when asked."""
    if not (options.scheduler or options.workers):
        return local_bands(predictor, image, dem, grid, options.batch_size)
    paths = [path for path in predictor.paths if path is not None]
    if len(paths) != len(predictor.paths):
        raise SlidemapError("Dask workers load models from files: pass --model PATH")
    stats = predictor.stats[0] if options.normalise == "scene" else None
    job = BandJob(absolute_name(image), absolute_name(dem) if dem else None,
                  tuple(str(Path(p).resolve()) for p in paths), options.tta,
                  predictor.precision, options.backend, options.compile, predictor.scales,
                  options.batch_size,
                  (tuple(stats.mean), tuple(stats.std)) if stats else None, grid)
    return dask_bands(job, options.scheduler, options.workers, MemoryBudget.of(options.memory_mb))


def dask_bands(job: BandJob, scheduler: str | None, workers: int, budget: MemoryBudget
               ) -> Generator[PredictedBand, None, None]:
    """Bands computed on Dask workers, handed out in row order as they complete."""
    with dask_client(scheduler, workers) as client:
        slots = bands_in_flight(sum(client.nthreads().values()), job.grid, budget)

        def submit(piece: tuple[int, int]) -> Future:
            # A Dask future has the methods of a concurrent.futures one that in_order calls.
            return cast(Future, client.submit(predict_band, job, piece, pure=False))

        for band in in_order(submit, job.grid.pieces, slots):
            yield cast(PredictedBand, band)


def bands_in_flight(threads: int, grid: Grid, budget: MemoryBudget) -> int:
    """Two bands per worker thread, so that none waits for work, but no more than ``budget``
    holds: the bands finished ahead of the one the rows wait for are held until gathered, so on
    500 threads bands of 18 MB (512 px windows at native resolution, 8192 px wide) were 18 GB."""
    return max(1, min(BANDS_PER_THREAD * max(1, threads), budget.bytes // band_bytes(grid)))


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int) -> Iterator[Client]:
    """A client of the scheduler at ``scheduler``, or of a local cluster of ``workers``
    single-threaded processes started for this run."""
    require("distributed", "dask", "--workers and --dask")
    from distributed import Client, LocalCluster
    from distributed.scheduler import KilledWorker

    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, ValueError) as exc:
            raise SlidemapError(f"cannot reach the Dask scheduler at {scheduler} "
                                f"({_one_line(exc)}): start one (dask scheduler) and workers "
                                "that see the same files, or use --workers N") from exc
        with _quiet_reconnects(), client:
            try:  # a scheduler without workers holds the tasks until one comes: forever
                client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
            except TimeoutError as exc:
                raise SlidemapError(f"the Dask scheduler at {scheduler} has no worker: start "
                                    f"some (dask worker {scheduler}) that see the same files, "
                                    "or use --workers N") from exc
            with _worker_failures(KilledWorker, SAME_FILES, f"the Dask scheduler at {scheduler}"):
                yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client, \
            _worker_failures(KilledWorker, "", "the local Dask cluster"):
        yield client


@contextlib.contextmanager
def _worker_failures(killed: type[Exception], hint: str, scheduler: str) -> Iterator[None]:
    """Errors of the bands' tasks as one line that says they came from a Dask worker: a file
    this machine reads but a worker cannot ("image X does not exist") read as if the user had
    mistyped it, and workers that died on a band (out of memory, a crash) were a traceback, as
    were bands cancelled when the scheduler went away mid-run (stopped, restarted, the network
    lost)."""
    try:
        yield
    except killed as exc:
        raise SlidemapError(f"Dask workers died while predicting a band of the scene "
                            f"({_one_line(exc)}): see the workers' logs (their memory limit, "
                            "--tile and --batch-size set what a band needs)") from exc
    except CancelledError as exc:  # distributed's FutureCancelledError is one
        raise SlidemapError(f"{scheduler} went away while the scene was mapped "
                            f"({_one_line(exc)}): check that it runs, then map the scene "
                            "again; nothing was written") from exc
    except SlidemapError as exc:
        raise SlidemapError(f"on a Dask worker: {exc}{hint}") from exc


@contextlib.contextmanager
def _quiet_reconnects() -> Iterator[None]:
    """The client's own tracebacks, logged while it tries to reach a scheduler that went away
    and as it gives up, left out: the error that follows says it in one line."""
    client_log = logging.getLogger("distributed.client")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        client_log.setLevel(level)


def predict_band(job: BandJob, piece: tuple[int, int]) -> PredictedBand:
    """On a worker: read and predict the band of windows of ``piece`` (column block, row)."""
    predictor = _predictor(job.models, job.tta, job.precision, job.backend, job.compile,
                           job.scales, job.stats)
    # predict_scene opened the same image and DEM on the client and warned about them once
    with bounded_gdal_cache(job.grid), \
            Scene(job.image, dem=job.dem, warn_dem=False) as scene:
        inputs = read_band(scene, predictor.spec, job.grid, piece)
    return infer_band(predictor.facing(job.grid.flips), inputs, job.batch_size)


@functools.lru_cache(maxsize=2)
def _predictor(models: tuple[str, ...], tta: bool, precision: str, backend: str, compile: bool,
               scales: tuple[float, ...],
               stats: tuple[tuple[float, ...], tuple[float, ...]] | None) -> Predictor:
    # workers compute probabilities only; the client drew the mask and warned of its threshold
    with silenced(SlidemapWarning, "ensemble members have different thresholds"):
        predictor = Predictor([load_model(p) for p in models], tta, precision, backend,
                              compile, scales)
    if stats is not None:
        predictor = predictor.with_stats(BandStats(list(stats[0]), list(stats[1])))
    return predictor


def _one_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
