"""Landslide4Sense (L4S) HDF5 patches: 128×128×14 ``img`` and 128×128 ``mask`` datasets.

The 14 channels are Sentinel-2 B1–B12 (B1, B2, ..., B8, B9, B10, B11, B12; no B8A), then slope
and DEM from ALOS PALSAR, all at about 10 m. Two layouts are read:

- the L4S release: ``root/img/image_N.h5`` and, for labelled splits, ``root/mask/mask_N.h5``;
- one file per patch: ``root/*.h5``, each holding ``img`` and optionally ``mask``.

Samples follow the data-layer contract (``image``, ``slope``, ``dem``, ``mask``, ``valid``,
``name``); values are the raw L4S values, which are already rescaled by the release.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from slidemap.data.names import DatasetName, local_file
from slidemap.data.patches import IGNORE, binary_mask, check_patch_size
from slidemap.errors import SlidemapError, first_line
from slidemap.extras import require
from slidemap.schema.values import BAND_NAMES, DEFAULT_BANDS, MAX_TILE, TERRAIN, band_indexes

if TYPE_CHECKING:
    import h5py

H5_SUFFIXES = frozenset({".h5", ".hdf5"})
# NumPy kinds of real numbers (bool, signed, unsigned, float): text failed as a traceback, and
# complex values were cast to their real part with a ComplexWarning
NUMBER_KINDS = "biuf"
# what h5py raises on a file that is not HDF5, or, once open, on a damaged B-tree or heap
# (RuntimeError), object header (KeyError) or compressed chunk (OSError)
H5_FAILURES = (OSError, RuntimeError, KeyError)


class L4SDataset:
    """Landslide4Sense patches with bands chosen by name.

    ``image`` holds the selected optical bands in the order given; ``slope`` and ``dem`` come as
    separate (1, H, W) arrays when selected. NaN in any selected channel makes the pixel invalid
    (``valid`` False, mask 255). Files are opened per sample, so the dataset is cheap to create.
    """

    def __init__(self, root: str | Path, bands: Sequence[str] = DEFAULT_BANDS) -> None:
        self.root = Path(root)
        self.bands = [BAND_NAMES[i] for i in band_indexes(bands)]
        self._images, self._masks = _find_files(self.root)
        self._headers: dict[int, tuple[int, int, int]] = {}  # read once: size and held bytes

    def __len__(self) -> int:
        return len(self._images)

    @property
    def names(self) -> list[str]:
        return [path.stem for path in self._images]

    @property
    def labelled(self) -> bool:
        return self._masks is not None

    @property
    def paths(self) -> list[Path]:
        """Every file the set reads (no output may replace one)."""
        return [*self._images, *(self._masks or [])]

    def georeference(self, index: int) -> None:
        """Landslide4Sense patches carry no georeference: their outputs have none either."""
        return None

    def image_path(self, index: int) -> Path:
        return self._images[index]

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of patch ``index`` from its file's header, before it is read."""
        return self._image_header(index)[:2]

    def read_bytes(self, index: int) -> int:
        """The bytes reading patch ``index`` holds at once: all 14 bands as stored and as
        float32, beside the chosen bands' stacks (a 1024² px float32 patch measured 127 B a
        pixel for 3 bands and 137 for 4, with tracemalloc)."""
        height, width, itemsize = self._image_header(index)
        return height * width * (len(BAND_NAMES) * (itemsize + 4) + 9 * len(self.bands))

    def _image_header(self, index: int) -> tuple[int, int, int]:
        """(height, width, bytes a value) of patch ``index``'s checked ``img``, unread."""
        if index not in self._headers:
            path = self._images[index]
            with _reading(path) as f:
                node = _dataset(f, path, "img")
                shape = tuple(node.shape)
                _check_image(path, shape)
                check_patch_size(path, shape[0], shape[1], shape[2], node.dtype.itemsize)
                self._headers[index] = (shape[0], shape[1], node.dtype.itemsize)
        return self._headers[index]

    def __getitem__(self, index: int) -> dict:
        path = self._images[index]
        data = _read_dataset(path, "img", _check_image)
        channels = np.moveaxis(data, -1, 0).astype(np.float32)
        picked = {name: channels[BAND_NAMES.index(name)] for name in self.bands}
        valid = np.isfinite(np.stack(list(picked.values()))).all(axis=0)
        optical = [picked[name] for name in self.bands if name not in TERRAIN]
        sample: dict = {"name": path.stem, "image": np.stack(optical)}
        for name in TERRAIN:
            if name in picked:
                sample[name] = picked[name][None]
        if self._masks is not None:
            mask_path = self._masks[index]
            mask = _read_dataset(mask_path, "mask", _mask_check(valid.shape))
            mask = binary_mask(mask, mask_path)
            mask[~valid] = IGNORE
            sample["mask"] = mask
        sample["valid"] = valid
        return sample


def _find_files(root: Path) -> tuple[list[Path], list[Path] | None]:
    """Image files and matching mask files (None when unlabelled), in patch-number order."""
    if not root.is_dir():
        raise SlidemapError(f"{root} is not a folder: pass a Landslide4Sense split folder")
    if (root / "img").is_dir():
        images = _h5_files(root / "img")
        if not (root / "mask").is_dir():
            return images, None
        masks = {path.stem: path for path in _h5_files(root / "mask")}
        paired = []
        for image in images:
            stem = re.sub(r"^image", "mask", image.stem)
            if stem not in masks:
                raise SlidemapError(
                    f"image {image} has no mask {root / 'mask' / stem}.h5: add it, or remove "
                    "mask/ to read the split unlabelled"
                )
            paired.append(masks[stem])
        return images, paired
    images = _h5_files(root)
    with_mask = [_has_key(path, "mask") for path in images]
    if any(with_mask) and not all(with_mask):
        missing = images[with_mask.index(False)]
        raise SlidemapError(f"{missing} has no 'mask' but other files do: label every patch")
    return images, images if all(with_mask) else None


def split_of_patch(name: DatasetName) -> Path | None:
    """The split folder of the Landslide4Sense patch file that the GDAL name ``name`` reads
    (``img/image_1.h5``, or ``HDF5:"img/image_1.h5"://img``), else None. GDAL reads a patch's
    (H, W, 14) ``img`` as H bands of 14 × W px, which was then refused as too small or as
    lacking a CRS or DEM: the split's folder is what predict maps."""
    path = local_file(name)
    if path is None or not is_h5_file(path) or not path.is_file():
        return None
    try:
        with _reading(path) as f:
            node = f.get("img")
            shape: tuple[int, ...] = tuple(node.shape) if isinstance(
                node, _h5py(path).Dataset) else ()
    except SlidemapError:  # no h5py, or no HDF5 file: GDAL's own error says what it is
        return None
    if len(shape) != 3 or shape[-1] != len(BAND_NAMES):
        return None
    return path.parent.parent if path.parent.name == "img" else path.parent


def is_h5_file(path: Path) -> bool:
    """Whether ``path`` names a patch file: ``.h5`` or ``.hdf5`` in any case, and not hidden (the
    ``._image_1.h5`` that macOS leaves beside every file it copies is no HDF5 file)."""
    return path.suffix.lower() in H5_SUFFIXES and not path.name.startswith(".")


def _h5_files(folder: Path) -> list[Path]:
    """The patch files of ``folder``, one per stem: a patch's outputs are named after its stem,
    so ``image_2.h5`` beside ``image_2.hdf5`` would write one patch's maps over the other's."""
    files = sorted((p for p in folder.iterdir() if is_h5_file(p)), key=_natural_key)
    if not files:
        raise SlidemapError(
            f"{folder}/ has no .h5 files: expected Landslide4Sense img/image_N.h5 "
            "(+ mask/mask_N.h5) or one .h5 per patch"
        )
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise SlidemapError(f"{folder}/ has both {seen[path.stem].name} and {path.name}: "
                                "keep one file per name")
        seen[path.stem] = path
    return files


def _natural_key(path: Path) -> list:
    """Sort image_2 before image_10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _has_key(path: Path, key: str) -> bool:
    with _reading(path) as f:
        return key in f


def _check_image(path: Path, shape: tuple[int, ...]) -> None:
    """An ``img`` must be (H, W, 14) and patch-sized: its shape is checked before it is read,
    so a file declaring a scene-sized array fails in one line instead of exhausting memory."""
    if len(shape) != 3 or shape[-1] != len(BAND_NAMES) or min(shape[:2]) < 1:
        raise SlidemapError(
            f"'img' in {path} has shape {shape}: expected (H, W, 14) Landslide4Sense bands"
        )
    if max(shape[:2]) > MAX_TILE:
        raise SlidemapError(f"'img' in {path} is {shape[0]}×{shape[1]} px: a patch may be at "
                            f"most {MAX_TILE} px a side (Landslide4Sense patches are 128)")


def _mask_check(size: tuple[int, ...]) -> Callable[[Path, tuple[int, ...]], None]:
    """The check of a ``mask`` shape against its image's ``size``, before the mask is read."""
    def check(path: Path, shape: tuple[int, ...]) -> None:
        if shape != size:
            raise SlidemapError(f"'mask' in {path} has shape {shape} but the image is {size}: "
                                "they must be the same size")
    return check


def _read_dataset(path: Path, key: str,
                  check: Callable[[Path, tuple[int, ...]], None]) -> np.ndarray:
    """The array ``key`` of ``path``, read once it holds real numbers and ``check`` accepts its
    shape."""
    with _reading(path) as f:
        node = _dataset(f, path, key)
        shape = tuple(node.shape)
        check(path, shape)
        check_patch_size(path, shape[0], shape[1], int(np.prod(shape[2:])), node.dtype.itemsize)
        return np.asarray(node[()])


def _dataset(f: h5py.File, path: Path, key: str) -> h5py.Dataset:
    """The array ``key`` of the open ``f``, unread, once it is an array of real numbers."""
    if key not in f:
        raise SlidemapError(
            f"{path} has no {key!r} dataset (keys: {', '.join(f.keys()) or 'none'}): "
            "is it a Landslide4Sense file?"
        )
    node = f[key]
    if not isinstance(node, _h5py(path).Dataset):
        raise SlidemapError(f"{key!r} in {path} is an HDF5 group, not an array: expected "
                            "a Landslide4Sense file with 'img' and 'mask' datasets")
    if node.dtype.kind not in NUMBER_KINDS:
        raise SlidemapError(f"{key!r} in {path} holds {node.dtype} values: expected real "
                            "numbers, as a Landslide4Sense file's float 'img' and integer "
                            "'mask'")
    return node


def _h5py(path: Path) -> ModuleType:
    """h5py, or a one-line error naming the extra that installs it."""
    return require("h5py", "hdf5", f"reading HDF5 file {path}")


@contextmanager
def _reading(path: Path) -> Iterator[h5py.File]:
    """``path`` open for reading. A file h5py fails on, at opening or while reading it (a
    damaged header or chunk was a KeyError, RuntimeError or OSError traceback or line that did
    not name the file, one among thousands of patches), is a one-line error naming it."""
    try:
        with _h5py(path).File(path, "r") as f:
            yield f
    except H5_FAILURES as exc:
        reason = first_line(exc).strip("'\"")  # a KeyError quotes its message
        raise SlidemapError(f"{path} cannot be read as HDF5 ({reason}): is the file complete "
                            "and undamaged?") from exc
