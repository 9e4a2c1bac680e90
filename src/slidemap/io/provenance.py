"""Provenance written into every output: which model, threshold, version, inputs and command.

An analyst who finds a mask on a share months later can tell how it was made from the file
alone (``gdalinfo`` shows the tags; QGIS shows them under the layer's metadata).
"""

from __future__ import annotations

import hashlib
import shlex
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from slidemap import __version__
from slidemap.data.names import DatasetName, absolute_name, as_name
from slidemap.errors import silenced

CHUNK = 2**20
IN_MEMORY = "in-memory model"  # SLIDEMAP_MODEL of a map made by a model that has no file


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def command_line() -> str:
    """The command that is running, as a shell would take it (the program by its name; run as
    ``python -m slidemap`` (torchrun's workers too), Python names the program ``__main__.py``,
    which no shell reruns)."""
    argv = sys.argv or ["python"]
    program = Path(argv[0]).name
    words = ["python", "-m", "slidemap"] if program == "__main__.py" else [program]
    return shlex.join([*words, *argv[1:]])


def provenance(models: Sequence[Path | None], threshold: float,
               inputs: dict[str, DatasetName | None],
               settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """The tags of one prediction: ``SLIDEMAP_*`` keys, models and hashes ``;``-separated;
    inputs and model files named absolutely, so that ``slidemap report`` run from another
    folder finds them (and the model's card);
    ``settings`` (windows, scales, TTA, normalisation, ...) as ``SLIDEMAP_OPTIONS``
    ``key=value`` words."""
    files = [p for p in models if p is not None]
    tags = {
        "SLIDEMAP_VERSION": __version__,
        "SLIDEMAP_MODEL": ";".join(str(p.resolve()) for p in files) or IN_MEMORY,
        "SLIDEMAP_MODEL_SHA256": ";".join(sha256_file(p) for p in files),
        # every digit: evaluate --prediction scores at this tag, and 6 digits moved the cut
        "SLIDEMAP_THRESHOLD": str(float(threshold)),
        "SLIDEMAP_COMMAND": command_line(),
        "SLIDEMAP_CREATED": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    for role, name in inputs.items():
        if name is not None:
            tags[f"SLIDEMAP_{role.upper()}"] = absolute_name(name)
    if settings:
        tags["SLIDEMAP_OPTIONS"] = " ".join(f"{key}={value}" for key, value in settings.items())
    return {"TIFFTAG_SOFTWARE": f"slidemap {__version__}", **tags}


def raster_tags(path: DatasetName) -> dict[str, str]:
    """Every tag of ``path`` (dataset domain, the SLIDEMAP domain, band 1), lower-case keys;
    empty when the file cannot be read. Tags need no georeference: a patch's probability TIFF
    has none, and rasterio's warning about it came out as a raw Python warning with its source
    line before ``evaluate`` scored the file."""
    try:
        with silenced(NotGeoreferencedWarning):
            ds = rasterio.open(as_name(path))
        with ds:
            tags = {**ds.tags(1), **ds.tags()}
            if "SLIDEMAP" in (ds.tag_namespaces() or []):
                tags.update(ds.tags(ns="SLIDEMAP"))
    except (RasterioError, OSError):
        return {}
    out = {}
    for key, value in tags.items():
        name = key.lower()
        for prefix in ("slidemap_", "slidemap:", "slidemap."):
            name = name.removeprefix(prefix)
        out[name] = value
    return out


def recorded_threshold(prediction: DatasetName) -> float | None:
    """The threshold a prediction raster's mask was drawn at (its provenance tag), if any."""
    try:
        value = float(raster_tags(prediction).get("threshold", "nan"))
    except ValueError:
        return None
    return value if 0 < value < 1 else None
