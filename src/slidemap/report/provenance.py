"""What made a prediction, as far as it can be known, and what its model's card says to expect.

A prediction's rasters may carry provenance tags (model file and digest, threshold, version,
inputs, command, date); older outputs carry none. The caller may also know some of it (``predict
--report`` knows its inputs). Both are merged, the caller's word first, and whatever is still
missing is reported as not recorded rather than guessed.

A model's accuracy on new ground is read from its sidecar's ``card`` (``new_ground``: a sentence
with the measured figures and where they come from), never written into the report by hand: a
sidecar without one gets "unmeasured".
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.io.modelfile import model_paths, sidecar_record
from slidemap.io.provenance import IN_MEMORY, raster_tags

UNMEASURED = ("Accuracy on new ground is unmeasured for this model: its sidecar carries no "
              "card with a cross-region or held-out estimate. Check a sample of the outlines "
              "against the imagery before acting on them.")
NOT_FOUND = ("Its sidecar ({sidecar}) is not found from here, so what its card says to expect on "
             "new ground cannot be read: run the report where the model file is, or check a "
             "sample of the outlines against the imagery before acting on them.")
UNKNOWN_MODEL = ("The model that made this map is not recorded in its outputs, so what to "
                 "expect of it on new ground cannot be said here.")
ADAPTED = ("This map was made by a copy of the model fine-tuned on this scene's own "
           "pseudo-labels (predict --adapt), not by the model file itself: the card speaks of "
           "the model before adaptation. What adaptation does on held-out ground is measured "
           "in benchmarks/protocol/adapt.md.")

# Tag names (lower case, a leading "slidemap_" or "slidemap:" dropped) that may hold each field.
TAG_NAMES = {
    "image": ("image", "input_image", "inputs_image", "source_image"),
    "dem": ("dem", "input_dem", "inputs_dem", "source_dem"),
    "models": ("model", "models", "model_file", "model_files", "model_path"),
    "model_sha256": ("model_sha256", "sha256", "model_digest", "models_sha256"),
    "threshold": ("threshold", "decision_threshold"),
    "version": ("version", "slidemap_version", "software_version"),
    "command": ("command", "command_line", "cmdline"),
    "options": ("options",),
    "created": ("created", "date", "datetime", "tifftag_datetime", "timestamp"),
}


@dataclass(frozen=True)
class Provenance:
    """The sources of a prediction; None or empty where unknown."""

    image: str | None = None
    dem: str | None = None
    models: tuple[str, ...] = ()
    model_sha256: tuple[str, ...] = ()
    threshold: float | None = None
    version: str | None = None
    command: str | None = None
    options: str | None = None  # windows, scales, TTA, normalisation, ... as resolved
    created: str | None = None
    adapted: str | None = None  # how the model was adapted to the scene, if it was
    adapted_trained: bool = False  # whether that adaptation changed the model at all

    def merged(self, other: Provenance) -> Provenance:
        """These values, with ``other``'s where these are missing."""
        return replace(self, **{f.name: getattr(other, f.name) for f in fields(self)
                                if not getattr(self, f.name) and getattr(other, f.name)})


def from_tags(tags: dict[str, str]) -> Provenance:
    """The provenance fields found among ``tags`` (values that do not parse are skipped)."""
    found: dict[str, Any] = {}  # keyword arguments of Provenance
    for field, names in TAG_NAMES.items():
        value = next((tags[n] for n in names if tags.get(n)), None)
        if value is None:
            continue
        if field in ("models", "model_sha256"):
            found[field] = _listed(value)
        elif field == "threshold":
            try:
                found[field] = float(value)
            except ValueError:
                continue
        else:
            found[field] = value
    inputs = tags.get("inputs")  # a JSON object of input names, if written that way
    if inputs:
        try:
            named = json.loads(inputs)
        except json.JSONDecodeError:
            named = None
        if isinstance(named, dict):
            found.setdefault("image", named.get("image"))
            found.setdefault("dem", named.get("dem"))
    if tags.get("adapted"):
        found["adapted"], found["adapted_trained"] = adaptation(tags["adapted"],
                                                                tags.get("adapted_model"))
    return Provenance(**{k: v for k, v in found.items() if v})


def adaptation(tag: str, saved_as: str | None) -> tuple[str, bool]:
    """The ``SLIDEMAP_ADAPTED`` tag (a JSON summary of ``predict --adapt``) in words, and
    whether the adaptation trained at all: one that trained no window left the model as it
    was, so its map is the unadapted one, whatever the tag's presence suggests."""
    try:
        record = json.loads(tag)
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("windows"), int):
        return tag, True
    saved = f"; saved as {saved_as}" if saved_as else ""
    if record["windows"] == 0:
        return (f"asked for, but no window trained (stopped by {record.get('stopped_by')}): "
                f"the map is the model's as it was{saved}", False)
    return (f"{record['windows']} training windows in {len(record.get('rounds') or [])} "
            f"rounds, {record.get('seconds')} s (stopped by {record.get('stopped_by')}){saved}",
            True)


def _listed(value: str) -> tuple[str, ...]:
    """A tag holding one name, a JSON list, or names separated by commas or semicolons."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = None
    if isinstance(parsed, list):
        return tuple(str(v) for v in parsed)
    separator = ";" if ";" in value else ","
    return tuple(v.strip() for v in value.split(separator) if v.strip())


def of_prediction(prob_path: Path, mask_path: Path, given: Provenance | None = None
                  ) -> Provenance:
    """What made the rasters: ``given`` first, then their tags, then their files' time."""
    tagged = from_tags({**raster_tags(mask_path), **raster_tags(prob_path)})
    known = (given or Provenance()).merged(tagged)
    if known.threshold is None and known.models:
        thresholds = [c.get("threshold") for c in map(sidecar_record, known.models) if c]
        numbers = [t for t in thresholds if isinstance(t, int | float)]
        if thresholds and len(numbers) == len(thresholds):
            known = replace(known, threshold=float(np.mean(numbers)))  # as an ensemble does
    if not known.model_sha256 and known.models:
        digests = [_sha256(Path(m)) for m in known.models]
        if all(digests):
            known = replace(known, model_sha256=tuple(d for d in digests if d))
    if not known.created and prob_path.exists():
        stamp = dt.datetime.fromtimestamp(prob_path.stat().st_mtime).astimezone()
        known = replace(known, created=stamp.strftime("%Y-%m-%d %H:%M %Z") + " (file time)")
    return known


def _sha256(path: Path) -> str | None:
    weights = model_paths(path)[0] if path.suffix != ".onnx" else path
    if not weights.is_file():
        return None
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for chunk in iter(lambda: handle.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def accuracy_caveat(models: tuple[str, ...]) -> list[tuple[str, str]]:
    """(model name, what its card says to expect on new ground) for each model file; a
    sidecar that is not there is said to be missing, not to carry no card."""
    if not models:
        return [("", UNKNOWN_MODEL)]
    caveats = []
    for model in models:
        sidecar = model_paths(model)[1]
        if model != IN_MEMORY and not sidecar.is_file():
            caveats.append((Path(model).name, NOT_FOUND.format(sidecar=sidecar)))
            continue
        card = sidecar_record(model).get("card")
        said = card.get("new_ground") if isinstance(card, dict) else None
        caveats.append((Path(model).name, said if isinstance(said, str) and said.strip()
                        else UNMEASURED))
    return caveats
