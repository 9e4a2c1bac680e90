"""Which GDAL dataset names are local files: the one rule the config schema and the readers share.

A run config's raster may be any name GDAL opens: a local path, a ``/vsi*`` path, a URL or a
``DRIVER:"file":sub`` subdataset. The schema keeps every name but a local path as the text
written (``pathlib.Path`` folds the ``//`` of ``/vsizip//abs/d.zip/o.tif``); the readers
(``slidemap.data.names``) check only local files on disk. Both ask :func:`is_local`, defined
here because the schema layer sits below the data layer.
"""

from __future__ import annotations

import re
from pathlib import Path

SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
VSI = re.compile(r"^/vsi[a-z0-9_]+/")
# /vsi handlers that read a file: the archive path follows them (relative to the working folder)
ARCHIVE = re.compile(r"^/vsi(?:zip|gzip|tar|7z|rar)/")
# DRIVER:"file":sub or DRIVER:file:sub (HDF5, NETCDF, SENTINEL2_L1C, GPKG, ...)
SUBDATASET = re.compile(r'^(?P<driver>[A-Z][A-Z0-9_]+):(?P<rest>.+)$')


def is_local(name: str | Path) -> bool:
    """Whether ``name`` is a plain file path on this machine (not /vsi*, a URL or a subdataset)."""
    if isinstance(name, Path):
        return True
    text = str(name)
    if VSI.match(text) or SCHEME.match(text):
        return False
    match = SUBDATASET.match(text)
    # "C:\\scene.tif" is a Windows drive, not a driver prefix
    return not (match and len(match["driver"]) > 1)
