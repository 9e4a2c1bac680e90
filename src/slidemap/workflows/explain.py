"""``slidemap explain``: why the model says landslide in one window of a scene (Grad-CAM,
attention and probability maps; ``slidemap.explain.run``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from slidemap.data.names import DatasetName
from slidemap.errors import UsageError
from slidemap.explain.run import explain_window
from slidemap.io.modelfile import load_model
from slidemap.workflows.inputs import default_model_path


@dataclass(frozen=True)
class ExplainResult:
    layer: str  # the module Grad-CAM looked at ("mean over N members' NAME": an ensemble's)
    region_pixels: int  # working pixels of the region explained
    files: dict[str, Path]  # PNGs, GeoTIFFs (georeferenced inputs) and explain.json


def explain(image: DatasetName, out_dir: Path, dem: DatasetName | None = None,
            model: Path | None = None, window: tuple[int, ...] | None = None,
            box: tuple[int, ...] | None = None, layer: str | None = None,
            overwrite: bool = False) -> ExplainResult:
    """Explain ``window`` (col, row, width, height in native px; default: one tile at the
    centre) of ``image``: the predicted landslides, or ``box`` (row0, col0, row1, col1 in
    window px)."""
    _check_four("window", window, "col, row, width, height")
    _check_four("box", box, "row0, col0, row1, col1")
    bundle = load_model(model or default_model_path(dem is not None))
    summary = explain_window(bundle, image, out_dir, dem, window, box, layer, overwrite)
    return ExplainResult(summary["layer"], summary["region_pixels"],
                         {k: Path(v) for k, v in summary["files"].items()})


def _check_four(name: str, value: tuple[int, ...] | None, form: str) -> None:
    """A window or box is four whole numbers (the CLI parses them so; the API takes tuples)."""
    if value is not None and (len(value) != 4 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise UsageError(f"{name} {value!r} is not valid: give {form} as 4 integers")
