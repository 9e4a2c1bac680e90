"""GDAL dataset names: local paths, ``/vsi*`` paths, URLs and subdatasets, as rasterio opens them.

A name is kept as text: ``pathlib.Path`` would fold ``https://`` into ``https:/`` and cannot hold
``HDF5:"scene.h5"://img``. Only local files are checked on disk before opening; anything else is
handed to GDAL, whose own error is turned into one line by the caller. Which names are local is
decided in ``slidemap.schema.gdalname``, so that run configs keep the same names as text.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from slidemap.schema.gdalname import ARCHIVE, SCHEME, SUBDATASET, VSI, is_local

SAFE_STEM = re.compile(r"[^A-Za-z0-9._-]+")

DatasetName = str | Path


def as_name(name: DatasetName) -> str:
    """The dataset name as GDAL takes it (a ``Path`` as its text)."""
    return str(name)


def local_path(name: DatasetName) -> Path | None:
    """``name`` as a ``Path`` when it is a local file, else None."""
    return Path(name) if is_local(name) else None


def local_file(name: DatasetName) -> Path | None:
    """The file on this machine that ``name`` reads: a local path, or the file of a
    ``DRIVER:"file":sub`` subdataset; None for /vsi* names and URLs."""
    if is_local(name):
        return Path(name)
    text = str(name)
    file, _ = _file_part(text)
    return None if file == text or not is_local(file) else Path(file)


def _file_part(text: str) -> tuple[str, str]:
    """(the file a name points into, the subdataset inside it or "")."""
    match = SUBDATASET.match(text)
    if not match or SCHEME.match(text) or VSI.match(text) or len(match["driver"]) == 1:
        return text, ""
    rest = match["rest"]
    if rest.startswith('"'):
        end = rest.find('"', 1)
        file, sub = (rest[1:end], rest[end + 1:]) if end > 0 else (rest[1:], "")
    else:  # the file ends at the first ":" after a suffix: f.nc:var, S2/MTD.xml:10m:EPSG_32632
        split = re.match(r"^(.+?\.[A-Za-z0-9]+):(.*)$", rest)
        file, sub = (split[1], split[2]) if split else (rest, "")
    return file, sub.strip(":/")


def dataset_stem(name: DatasetName) -> str:
    """A file-name stem for outputs derived from ``name``: a local file's own stem, the member's
    stem inside a zip or a URL, ``file_subdataset`` for a subdataset (``HDF5:"f.h5"://img`` →
    ``f_img``)."""
    text = str(name)
    if is_local(name):  # a local file keeps its own stem, brackets and all
        return Path(text).stem or "scene"
    file, sub = _file_part(text)
    file = SCHEME.sub("/", file).split("?", 1)[0].rstrip("/")
    path = PurePosixPath(file.replace("\\", "/"))
    # a Sentinel-2 SAFE's metadata file has the same name in every product: name the product
    stem = (path.parent.stem if path.stem.startswith("MTD_") else path.stem) or "scene"
    if sub:
        stem = f"{stem}_{sub}"
    return SAFE_STEM.sub("_", stem).strip("_.") or "scene"


def display_name(name: DatasetName) -> str:
    """The last part of a name, for progress bars (the whole name when it has no parts)."""
    file, sub = _file_part(str(name))
    base = PurePosixPath(file.split("?", 1)[0].rstrip("/")).name or str(name)
    return f"{base}:{sub}" if sub else base


def absolute_name(name: DatasetName) -> str:
    """``name`` as other processes (Dask workers) and other folders (a STAC Item, provenance
    tags read back elsewhere) can open it: a local path made absolute, and so the archive of a
    ``/vsizip/`` (``/vsitar/``, ...) name and the file of a subdataset; URLs are left alone."""
    path = local_path(name)
    if path is not None:
        return str(path.resolve())
    text = as_name(name)
    archive = ARCHIVE.match(text)
    if archive:
        return archive[0] + _absolute_archive(text[archive.end():])
    return _absolute_subdataset(text)


def _absolute_archive(rest: str) -> str:
    """What follows ``/vsizip/``: a chained ``/vsi`` name, ``{archive}/member`` or
    ``archive/member``, with a relative archive put under the working folder (GDAL reads it
    from there)."""
    if VSI.match(rest):
        return absolute_name(rest)
    braced = rest.startswith("{")
    inner = rest[1:] if braced else rest
    if inner.startswith("/"):
        return rest
    return ("{" if braced else "") + os.path.join(os.getcwd(), inner)


def _absolute_subdataset(text: str) -> str:
    """``DRIVER:"file":sub`` with its file made absolute where that file exists here; any other
    name as it is (``GTIFF_DIR:1:f.tif``, ``PG:dbname=...`` have no file part to rewrite)."""
    file, _ = _file_part(text)
    if file == text or not Path(file).is_file():  # not a subdataset of a local file
        return text
    driver, rest = text.split(":", 1)
    return f"{driver}:{rest.replace(file, absolute_name(file), 1)}"


def local_files(*names: DatasetName | None) -> list[Path]:
    """The names that are files here (which no output may overwrite); others are skipped."""
    return [p for p in (local_path(n) for n in names if n is not None) if p is not None]
