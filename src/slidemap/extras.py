"""Optional dependencies: HDF5 (h5py), ONNX (onnx, onnxruntime) and Dask (distributed) are
extras, so the core install stays small; a feature that needs a missing one says which extra
to install, on one line."""

from __future__ import annotations

import importlib
from types import ModuleType

from slidemap.errors import SlidemapError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or fail naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SlidemapError(f"{feature} needs the optional package {module.split('.')[0]}: "
                            f"pip install 'slidemap[{extra}]' (or 'slidemap[all]')") from exc
