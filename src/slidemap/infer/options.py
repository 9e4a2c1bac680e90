"""How to predict: the options every prediction path shares (scenes, patch sets, Dask bands).

Their own module, below both the single-process and the distributed scene paths that read them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from slidemap.data.machine import cpu_cores
from slidemap.errors import UsageError
from slidemap.infer.budget import MIN_MEMORY_MB
from slidemap.io.modelfile import PredictDefaults, common_setting
from slidemap.io.sidecar import check_threshold
from slidemap.schema.values import MIN_TILE, NORMALISATIONS


@dataclass(frozen=True)
class PredictOptions:
    """How to predict; ``tile``, ``overlap`` (see :meth:`resolve`), ``scales`` and ``threshold``
    (see ``Predictor``) left None are the model's own, from its sidecar."""

    tile: int | None = None
    overlap: int | None = None
    batch_size: int = 1  # windows per model call: at 512 px, more cost memory and no speed
    precision: str = "auto"  # bf16 where the CPU computes in it, else fp32
    tta: bool = False
    normalise: str = "model"  # "scene": statistics of the data predicted (separated)
    backend: str = "torch"  # or "onnx" (ONNX Runtime, fp32)
    compile: bool = False  # torch.compile the model (minutes to compile; for long runs)
    workers: int = 0  # bands on a local Dask cluster of this many processes
    scheduler: str | None = None  # bands on the Dask cluster at this address
    scales: tuple[float, ...] | None = None  # window scales averaged (1.0: as read)
    threshold: float | None = None  # probability from which a pixel is mapped as landslide
    memory_mb: int | None = None  # budget of the scene's buffers (None: DEFAULT_MEMORY_MB)

    def __post_init__(self) -> None:
        """The checks the CLI's options make, for the API's callers too: a window under
        ``MIN_TILE`` px ran for hours, ``workers=-1`` never returned, a bad ``normalise`` was a
        ``ValueError``; ``workers=100000`` started that many processes, each loading torch and
        the model, until memory ran out; ``memory_mb="512"`` was a TypeError once the scene was
        open, and ``scheduler=8786`` (a port alone) a TypeError from Dask's client."""
        if self.normalise not in NORMALISATIONS:
            raise UsageError(f"normalise must be one of {', '.join(NORMALISATIONS)}, not "
                             f"{self.normalise!r}")
        for name, low in (("tile", MIN_TILE), ("overlap", 0), ("batch_size", 1), ("workers", 0),
                          ("memory_mb", MIN_MEMORY_MB)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                raise UsageError(f"{name} must be a whole number of at least {low}, not "
                                 f"{value!r}")
        for name in ("tta", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name} must be True or False, not {getattr(self, name)!r:.40}")
        if self.threshold is not None:
            check_threshold(self.threshold, UsageError)
        if self.scheduler is not None and not isinstance(self.scheduler, str):
            raise UsageError(f"scheduler must be a Dask scheduler address as text, e.g. "
                             f"'tcp://10.0.0.5:8786', not {self.scheduler!r:.40}")
        if self.workers and self.scheduler:
            raise UsageError("--workers starts a local Dask cluster and --dask names another: "
                             "give one of them")
        if self.workers > cpu_cores():
            raise UsageError(f"--workers {self.workers} is more than the {cpu_cores()} CPU cores "
                             "here: each worker is a process of one thread with its own copy of "
                             f"the model; give at most {cpu_cores()}")

    def resolve(self, defaults: list[PredictDefaults]) -> PredictOptions:
        """These options with the window size and overlap, if left open, from the models'
        ``defaults`` (an ensemble's members must then agree on them)."""
        return replace(
            self, tile=common_setting(defaults, "tile", "--tile") if self.tile is None
            else self.tile,
            overlap=common_setting(defaults, "overlap", "--overlap") if self.overlap is None
            else self.overlap)
