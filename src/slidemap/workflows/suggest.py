"""``slidemap suggest``: the boxes of a scene most worth labelling next, where the model is
least sure, spread out (``slidemap.infer.suggest``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

from rich.progress import Progress

from slidemap.data.names import DatasetName, local_files
from slidemap.errors import UsageError
from slidemap.infer.options import PredictOptions
from slidemap.infer.predict import build_predictor
from slidemap.infer.suggest import BOX_SUFFIXES, suggest_boxes, write_boxes
from slidemap.io.atomic import check_outputs, output_folder
from slidemap.schema.values import file_of
from slidemap.workflows.inputs import ModelArg, model_files, model_list


@dataclass(frozen=True)
class Pick:
    rank: int
    col_off: int  # the box's corner in image pixels
    row_off: int
    score: float  # uncertainty times the box's valid fraction: what the ranking sorts by
    uncertainty: float


@dataclass(frozen=True)
class SuggestResult:
    boxes: Path
    candidates: int  # boxes scored
    skipped_labelled: int  # boxes left out as overlapping ``labels``
    picks: tuple[Pick, ...]


def suggest(model: ModelArg, image: DatasetName, out: Path, dem: DatasetName | None = None,
            n: int = 10, box: int = 512, labels: Sequence[Path] = (), spacing: int = 1,
            options: PredictOptions | None = None, overwrite: bool = False,
            progress: Progress | None = None) -> SuggestResult:
    """Write ``out``: the ``n`` boxes of ``image`` most worth labelling next, ranked, as
    polygons, skipping boxes that overlap the polygons of ``labels``."""
    for flag, value in (("--n", n), ("--box", box), ("--spacing", spacing)):
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise UsageError(f"{flag} {value!r} is not a whole number: suggest counts boxes "
                             "and pixels")
    if n < 1 or box < 1 or spacing < 0:
        raise UsageError("suggest needs --n >= 1, --box >= 1 px and --spacing >= 0")
    if out.suffix.lower() not in BOX_SUFFIXES:
        raise UsageError(f"--out {out}: name a GeoPackage (.gpkg) or GeoJSON (.geojson) file "
                         "for the boxes")
    options = options or PredictOptions()
    predictor = build_predictor(model_list(model, dem is not None), options)
    inputs = [*local_files(image, dem), *model_files(model, dem is not None),
              *(file_of(p) for p in labels)]
    check_outputs([out], inputs, overwrite)
    with output_folder(out.parent):
        suggestion = suggest_boxes(predictor, image, dem, n, box, labels, spacing, options,
                                   progress)
        write_boxes(suggestion, out, overwrite)
    picks = tuple(Pick(i + 1, int(p.window.col_off), int(p.window.row_off), float(p.score),
                       float(p.uncertainty)) for i, p in enumerate(suggestion.picks))
    return SuggestResult(out, suggestion.candidates, suggestion.skipped_labelled, picks)
