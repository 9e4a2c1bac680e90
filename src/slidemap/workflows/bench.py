"""``slidemap bench``: model-only against end-to-end throughput of mapping a scene, and peak
RSS (``slidemap.infer.bench``); the figures also go to a JSON file if asked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slidemap.data.names import DatasetName, local_files
from slidemap.errors import UsageError
from slidemap.infer.bench import bench_scene
from slidemap.infer.options import PredictOptions
from slidemap.io import jsontext
from slidemap.io.atomic import atomic_path, check_outputs, make_output_dir
from slidemap.workflows.inputs import ModelArg, model_files, model_list


@dataclass(frozen=True)
class BenchResult:
    figures: dict[str, Any]  # as written to --json: size, windows, *_mpx_s, peak_rss_mb, ...
    json_file: Path | None = None


def bench(image: DatasetName, dem: DatasetName | None = None, model: ModelArg = None,
          options: PredictOptions | None = None, sample: int = 32, agreement: bool = False,
          json_out: Path | None = None, overwrite: bool = False) -> BenchResult:
    """Time mapping ``image``; with ``agreement``, how close the map is to torch fp32.
    ``json_out`` is checked before the run, like every output."""
    if sample < 1:
        raise UsageError(f"sample {sample} is not valid: time at least 1 window")
    if json_out is not None:
        inputs = [*local_files(image, dem), *model_files(model, dem is not None)]
        check_outputs([json_out], inputs, overwrite, "--json")
    figures = bench_scene(image, dem, model_list(model, dem is not None),
                          options or PredictOptions(), sample,
                          agreement)
    if json_out is not None:
        make_output_dir(json_out.parent)
        with atomic_path(json_out, overwrite) as tmp:
            tmp.write_text(jsontext.dumps(figures, indent=2) + "\n")
    return BenchResult(figures, json_out)
