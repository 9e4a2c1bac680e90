"""Folders of ungeoreferenced patches: ``images/`` + ``masks/`` (+ ``dem/``) and the Bijie layout.

Samples follow the data-layer contract: ``image`` float32 (C, H, W) raw band values, optional
``dem`` float32 (1, H, W) with NaN for nodata, optional ``slope`` float32 (1, H, W) degrees,
``valid`` bool (H, W), ``mask`` uint8 (H, W) with 0 background, 1 landslide, 255 ignore (absent
for unlabelled folders), and ``name``. Pixels that are nodata in any input are ``valid == False``
and 255 in the mask, so losses and metrics skip them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image, UnidentifiedImageError
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from slidemap.data.scaling import resize
from slidemap.data.terrain import (
    bounds_centre,
    eight_bit_unitless,
    elevation_to_metres,
    pixel_size_m,
    slope_degrees,
)
from slidemap.errors import SlidemapError
from slidemap.schema.values import MAX_TILE

IGNORE = 255
SUFFIXES = frozenset({".png", ".tif", ".tiff", ".jpg", ".jpeg"})
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
BIJIE_GROUPS = ("landslide", "non-landslide")
MAX_PATCH_BYTES = 2**30  # a patch's stored values; float32 copies and the model's come on top


# -- reading single files -------------------------------------------------------------------------
def read_image(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an image as float32 (C, H, W) raw values and a (H, W) valid mask.

    TIFFs go through rasterio so 16-bit and float data keep their values and nodata is honoured;
    PNG/JPEG go through pillow. Alpha is dropped and fully transparent pixels count as nodata.
    NaN values are kept in the array and marked invalid.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        data, valid = _read_tiff(path)
    else:
        data, valid = _read_pillow(path, palette_as_rgb=True)
    image = data.astype(np.float32)
    return image, valid & np.isfinite(image).all(axis=0)


def read_dem(path: str | Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Read a single-band DEM as float32 (1, H, W) in metres (a GeoTIFF's scale, offset and
    unit applied, as for a scene) with NaN for nodata, plus its pixel size.

    The pixel size (dx, dy) in metres comes from the GeoTIFF georeference; it is None for files
    without a CRS, whose pixel size the caller must supply to compute slope.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        data, valid = _read_tiff(path)
    else:
        data, valid = _read_pillow(path, palette_as_rgb=False)
    if data.shape[0] != 1:
        raise SlidemapError(f"DEM {path} has {data.shape[0]} bands: a DEM must be single-band")
    dem = data.astype(np.float32)
    dem[:, ~valid] = np.nan
    scale, offset = _dem_to_metres(path)
    if (scale, offset) != (1.0, 0.0):
        dem = (dem.astype(np.float64) * scale + offset).astype(np.float32)
    return dem, _dem_pixel_size(path)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label file as uint8 (H, W) with 0 background, 1 landslide, 255 ignore.

    TIFF nodata pixels become 255; the rest goes through :func:`binary_mask`. Masks saved as RGB
    with three equal bands are accepted as single-band.
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        data, valid = _read_tiff(path)
    else:
        data, valid = _read_pillow(path, palette_as_rgb=False)
    if data.shape[0] > 1 and not (data == data[:1]).all():
        raise SlidemapError(
            f"mask {path} has {data.shape[0]} different bands: save masks as single-band images"
        )
    mask = binary_mask(data[0][valid], path)
    out = np.full(valid.shape, IGNORE, dtype=np.uint8)
    out[valid] = mask
    return out


def binary_mask(values: np.ndarray, source: str | Path) -> np.ndarray:
    """Map label values to 0/1, deciding the convention per file from its maximum.

    A file whose maximum is above 1 is read as 0/255 (255 = landslide), otherwise as 0/1; any other
    value is an error naming ``source``, since guessing would silently corrupt labels.
    """
    values = np.asarray(values)
    if values.dtype == bool:  # 1-bit PNG
        values = values.astype(np.uint8)
    present = np.unique(values)
    high = present.size > 0 and present.max() > 1
    allowed = (0, 255) if high else (0, 1)
    if not np.isin(present, allowed).all():
        shown = ", ".join(f"{v:g}" for v in present[:8]) + (", ..." if present.size > 8 else "")
        raise SlidemapError(
            f"{source} has values {{{shown}}}: masks must be 0/1 or 0/255 "
            "(255 read as landslide when the file is 0/255)"
        )
    return (values == allowed[1]).astype(np.uint8)


def check_patch_size(path: Path, height: int, width: int, bands: int, itemsize: int) -> None:
    """Refuse, before it is read, a patch more than ``MAX_TILE`` px a side or
    ``MAX_PATCH_BYTES`` of values: patches are read whole, and a compressed file of a kilobyte
    may declare a scene (a 100 000² px TIFF, a 14-band float64 HDF5 array 8192 px a side), which
    ran out of memory after allocating instead."""
    stored = height * width * bands * itemsize
    if not patch_fits(height, width, stored):
        raise SlidemapError(
            f"{path} is {width:,} × {height:,} px with {bands} band(s), {stored / 2**20:,.0f} MB "
            f"of values: a patch may be at most {MAX_TILE} px a side and "
            f"{MAX_PATCH_BYTES // 2**20} MB; cut it into patches, or map it as a scene "
            "(slidemap predict FILE, windowed)")


def patch_fits(height: int, width: int, nbytes: int) -> bool:
    """Whether a patch of ``height`` × ``width`` px and ``nbytes`` of values may be held whole:
    at most ``MAX_TILE`` px a side and ``MAX_PATCH_BYTES``."""
    return max(height, width) <= MAX_TILE and nbytes <= MAX_PATCH_BYTES


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) of a patch image from its header alone (GDAL reads PNG and JPEG headers
    as well), so that what mapping it takes is known before it is read."""
    try:
        with _open_tiff(path) as src:
            return src.height, src.width
    except RasterioIOError as exc:
        raise SlidemapError(f"{path} cannot be read as an image: is the file complete?") from exc


def _pillow_itemsize(mode: str) -> int:
    """Bytes per band value of a Pillow mode: 4 for 32-bit integer and float, 2 for 16-bit."""
    return 4 if mode in ("I", "F") else 2 if mode.startswith("I;16") else 1


def _open_tiff(path: Path) -> rasterio.DatasetReader:
    """Open a patch TIFF; patches are usually not georeferenced, so rasterio's warning is noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


@dataclass(frozen=True)
class Georeference:
    """A patch image's CRS and transform: its outputs are written on that grid, so they keep
    their place on the map."""

    crs: CRS
    transform: Affine


def image_georeference(path: Path) -> Georeference | None:
    """The CRS and transform of a GeoTIFF patch image; None for PNG/JPEG and TIFFs without a
    CRS (most patch sets are not georeferenced)."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    with _open_tiff(path) as src:
        return Georeference(src.crs, src.transform) if src.crs is not None else None


def _read_tiff(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All non-alpha bands of a TIFF in their own dtype, and the GDAL dataset validity mask
    (less the transparent pixels of an alpha band GDAL's mask leaves out)."""
    try:
        with _open_tiff(path) as src:
            bands = [i for i, ci in enumerate(src.colorinterp, 1) if ci != ColorInterp.alpha]
            check_patch_size(path, src.height, src.width, len(bands or src.indexes),
                             max(np.dtype(d).itemsize for d in src.dtypes))
            data = src.read(bands or None)
            valid = src.dataset_mask() > 0
            alpha = alpha_gdal_ignores(src)
            if alpha is not None:
                valid &= src.read(alpha) > 0
    except RasterioIOError as exc:
        raise SlidemapError(f"{path} cannot be read as a TIFF: is the file complete?") from exc
    return data, valid


def alpha_gdal_ignores(dataset: rasterio.DatasetReader) -> int | None:
    """The band number of an alpha band GDAL's own mask leaves out (a float one, as gdalwarp
    -dstalpha writes for a float scene; band 5 after RGB + NIR, as gdalbuildvrt -addalpha
    makes), so that its transparent pixels are nodata; None where GDAL masks by it, a nodata
    value overrides it or there is none. Scenes and patch TIFFs read their validity by it."""
    if (ColorInterp.alpha not in dataset.colorinterp
            or dataset.mask_flag_enums[0] != [MaskFlags.all_valid]):
        return None
    return dataset.colorinterp.index(ColorInterp.alpha) + 1


def _dem_to_metres(path: Path) -> tuple[float, float]:
    """(scale, offset) from a GeoTIFF DEM's stored values to metres, as a scene's DEM is read
    (``terrain.elevation_to_metres``); PNG DEMs carry no scale or unit."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return 1.0, 0.0
    with _open_tiff(path) as src:
        return elevation_to_metres(src, path)


def _dem_pixel_size(path: Path) -> tuple[float, float] | None:
    """Pixel size in metres from a GeoTIFF's CRS and transform; None without a CRS."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    with _open_tiff(path) as src:
        if src.crs is None:
            return None
        return pixel_size_m(src.crs, src.res, bounds_centre(src.bounds))


def _read_pillow(path: Path, palette_as_rgb: bool) -> tuple[np.ndarray, np.ndarray]:
    """Bands of a PNG/JPEG as (C, H, W) and a validity mask from the alpha channel, if any.

    Palette images are expanded to RGB for imagery but kept as indices for masks, where the index
    is the class.
    """
    try:
        with warnings.catch_warnings():  # its size is checked below, before it is decoded
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im: Image.Image = Image.open(path)
        with im:
            check_patch_size(path, im.height, im.width, len(im.getbands()),
                             _pillow_itemsize(im.mode))
            im.load()
            if im.mode == "P" and palette_as_rgb:
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            array = np.asarray(im)
            has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La")
    except Image.DecompressionBombError as exc:  # over twice Pillow's limit: refused on open
        raise SlidemapError(f"{path} is larger than Pillow decodes: a patch "
                            f"may be at most {MAX_TILE} px a side; cut it into patches, or map "
                            "it as a scene (slidemap predict FILE, windowed)") from exc
    except (OSError, UnidentifiedImageError) as exc:
        raise SlidemapError(f"{path} cannot be read as an image: is the file complete?") from exc
    if array.ndim == 2:
        array = array[..., None]
    valid = np.ones(array.shape[:2], dtype=bool)
    if has_alpha:
        valid = array[..., -1] > 0
        array = array[..., :-1]
    return np.moveaxis(array, -1, 0), valid


# -- datasets -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatchFiles:
    """The files of one patch; ``labelled`` with no ``mask`` file means all background."""

    name: str
    image: Path
    mask: Path | None = None
    dem: Path | None = None
    labelled: bool = False


class PatchDataset:
    """Samples from a list of :class:`PatchFiles`, read lazily one patch at a time.

    ``bands`` are 1-based image band indexes (as rasterio), None for all. ``pixel_size`` is the
    image pixel size in metres (one number or (dx, dy)); it lets slope be computed from DEMs
    without georeference and overrides the one of georeferenced DEM TIFFs. Samples carry
    ``slope`` only when a pixel size is known (see :attr:`has_slope`).
    """

    def __init__(self, files: Sequence[PatchFiles], bands: Sequence[int] | None = None,
                 pixel_size: float | tuple[float, float] | None = None) -> None:
        self.files = list(files)
        self.bands = None if bands is None else [int(b) for b in bands]
        if isinstance(pixel_size, (int, float)):
            pixel_size = (float(pixel_size), float(pixel_size))
        self.pixel_size = pixel_size

    def __len__(self) -> int:
        return len(self.files)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]

    @property
    def paths(self) -> list[Path]:
        """Every file the set reads (no output may replace one)."""
        return [path for f in self.files for path in (f.image, f.mask, f.dem) if path is not None]

    def reads_from(self, folder: Path) -> bool:
        """Whether ``folder`` (resolved) is one the set reads its patch files from (``images/``,
        ``masks/``, ``dem/``): outputs written there would replace patches or be read as ones."""
        return folder in {parent.resolve() for parent in {path.parent for path in self.paths}}

    @property
    def labelled(self) -> bool:
        """True when every patch has labels (a mask file, or known to be all background)."""
        return bool(self.files) and all(f.labelled for f in self.files)

    @property
    def has_dem(self) -> bool:
        return bool(self.files) and all(f.dem is not None for f in self.files)

    @property
    def has_slope(self) -> bool:
        """Whether samples carry slope; checked on the first DEM when no pixel size was given."""
        if not self.has_dem:
            return False
        first = self.files[0].dem
        return self.pixel_size is not None or (
            first is not None and _dem_pixel_size(first) is not None
        )

    def eight_bit_dem(self) -> str | None:
        """A one-line warning for the set when its first DEM is 8-bit with no unit, scale or
        offset (Bijie's PNGs): it is read as whole metres, 0 to 255, right only if that is what
        it holds; grey levels stretched per patch give a DEM and slopes of nothing on the
        ground. None otherwise, and without ``dem/``."""
        first = self.files[0].dem if self.has_dem else None
        if first is None:
            return None
        with _open_tiff(first) as src:  # GDAL reads a PNG or JPEG DEM as well
            if not eight_bit_unitless(src):
                return None
            dtype = src.dtypes[0]
        return (f"the DEMs in {first.parent} are 8-bit ({first.name}: {dtype}) with no unit: "
                "read as whole metres, 0 to 255, so the DEM and slope the model reads are "
                "wrong if they hold grey levels or another unit; pass elevations in metres "
                "(float32 or int16 GeoTIFFs) if you know their scale")

    def image_path(self, index: int) -> Path:
        return self.files[index].image

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of patch ``index`` from its image's header, before it is read."""
        return image_size(self.files[index].image)

    def read_bytes(self, index: int) -> int:
        """Reading a patch's image holds its bands as float32, which ``patch_held_bytes``
        counts: nothing on top."""
        return 0

    def georeference(self, index: int) -> Georeference | None:
        """Where patch ``index`` lies on the map, if its image is a georeferenced GeoTIFF."""
        return image_georeference(self.files[index].image)

    def __getitem__(self, index: int) -> dict:
        files = self.files[index]
        image, valid = read_image(files.image)
        image = self._select_bands(image, files.image)
        sample: dict = {"name": files.name, "image": image}
        if files.dem is not None:
            sample.update(self._terrain(files.dem, image.shape[-2:]))
            for key in ("dem", "slope"):
                if key in sample:
                    valid &= np.isfinite(sample[key][0])
        if files.labelled:
            if files.mask is None:
                mask = np.zeros(valid.shape, dtype=np.uint8)
            else:
                mask = read_mask(files.mask)
                _check_shape(mask, files.mask, image, files.image)
            mask[~valid] = IGNORE
            sample["mask"] = mask
        sample["valid"] = valid
        return sample

    def _terrain(self, path: Path, size: tuple[int, int]) -> dict[str, np.ndarray]:
        """DEM on the image grid, and slope when a pixel size is known.

        A DEM of another size covers the same patch at another resolution (Bijie DEMs are
        coarser than the imagery), so it is resampled bilinearly onto the image grid.
        """
        dem, pixel_size = read_dem(path)
        h, w = dem.shape[-2:]
        if (h, w) != tuple(size):
            if pixel_size is not None:
                pixel_size = (pixel_size[0] * w / size[1], pixel_size[1] * h / size[0])
            dem = resize(dem, (size[0], size[1]))
        out = {"dem": dem}
        pixel_size = self.pixel_size or pixel_size
        if pixel_size is not None:
            out["slope"] = slope_degrees(dem, pixel_size)
        return out

    def _select_bands(self, image: np.ndarray, path: Path) -> np.ndarray:
        if self.bands is None:
            return image
        if min(self.bands) < 1 or max(self.bands) > image.shape[0]:
            raise SlidemapError(
                f"image {path} has {image.shape[0]} band(s) but bands {self.bands} were asked: "
                "band numbers start at 1"
            )
        return image[[b - 1 for b in self.bands]]


class PatchFolder(PatchDataset):
    """``root/images/`` with same-stem ``root/masks/`` and optional ``root/dem/``.

    Files pair by stem, so ``images/a.jpg`` pairs with ``masks/a.png``. Without ``masks/`` the
    folder is unlabelled (prediction, pseudo-labels) and samples have no ``mask``.
    """

    def __init__(self, root: str | Path, bands: Sequence[int] | None = None,
                 pixel_size: float | tuple[float, float] | None = None) -> None:
        root = Path(root)
        _require_dir(root)
        images = _index_folder(root / "images", required=True)
        masks = _index_folder(root / "masks") if (root / "masks").is_dir() else None
        dems = _index_folder(root / "dem") if (root / "dem").is_dir() else None
        files = [
            PatchFiles(
                name=stem,
                image=path,
                mask=_partner(masks, stem, path, root / "masks", "mask"),
                dem=_partner(dems, stem, path, root / "dem", "DEM"),
                labelled=masks is not None,
            )
            for stem, path in images.items()
        ]
        super().__init__(files, bands=bands, pixel_size=pixel_size)
        self.root = root


class BijieFolder(PatchDataset):
    """The Bijie dataset: ``landslide/{image,dem,mask}`` and ``non-landslide/{image,dem}``.

    Non-landslide patches have no mask files; their labels are all background. Names are
    ``landslide_<stem>`` / ``non-landslide_<stem>`` so both groups can share a stem and names stay
    usable as file names. Either group may be absent.
    """

    def __init__(self, root: str | Path, bands: Sequence[int] | None = None,
                 pixel_size: float | tuple[float, float] | None = None) -> None:
        root = Path(root)
        _require_dir(root)
        if not any((root / g / "image").is_dir() for g in BIJIE_GROUPS):
            raise SlidemapError(
                f"{root} has neither landslide/image/ nor non-landslide/image/: "
                "pass the root of the Bijie dataset"
            )
        files: list[PatchFiles] = []
        for group in BIJIE_GROUPS:
            folder = root / group
            if not (folder / "image").is_dir():
                continue
            images = _index_folder(folder / "image", required=True)
            dems = _index_folder(folder / "dem", required=True)
            masks = _index_folder(folder / "mask", required=True) if group == "landslide" else None
            files += [
                PatchFiles(
                    name=f"{group}_{stem}",
                    image=path,
                    mask=_partner(masks, stem, path, folder / "mask", "mask"),
                    dem=_partner(dems, stem, path, folder / "dem", "DEM"),
                    labelled=True,
                )
                for stem, path in images.items()
            ]
        super().__init__(files, bands=bands, pixel_size=pixel_size)
        self.root = root


def open_patch_dataset(root: str | Path, bands: Sequence[int] | None = None,
                       pixel_size: float | tuple[float, float] | None = None) -> PatchDataset:
    """Open a patch folder, detecting the Bijie layout or the ``images/`` + ``masks/`` layout."""
    root = Path(root)
    _require_dir(root)
    if any((root / g / "image").is_dir() for g in BIJIE_GROUPS):
        return BijieFolder(root, bands=bands, pixel_size=pixel_size)
    if (root / "images").is_dir():
        return PatchFolder(root, bands=bands, pixel_size=pixel_size)
    raise SlidemapError(
        f"{root} is not a patch folder: expected images/ (+ masks/, dem/) or the Bijie layout "
        "landslide/{image,dem,mask} + non-landslide/{image,dem}"
    )


# -- helpers --------------------------------------------------------------------------------------
def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise SlidemapError(f"{root} is not a folder: pass the dataset root")


def _index_folder(folder: Path, required: bool = False) -> dict[str, Path]:
    """Image files of ``folder`` by stem, sorted; hidden and non-image files are ignored."""
    if not folder.is_dir():
        if required:
            raise SlidemapError(f"{folder}/ is missing: the layout needs it")
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in SUFFIXES:
            continue
        if path.stem in found:
            raise SlidemapError(
                f"{folder}/ has both {found[path.stem].name} and {path.name}: "
                "keep one file per name"
            )
        found[path.stem] = path
    if required and not found:
        raise SlidemapError(f"{folder}/ is empty: add PNG, TIFF or JPEG files")
    return found


def _partner(index: dict[str, Path] | None, stem: str, image: Path, folder: Path,
             role: str) -> Path | None:
    """The same-stem file of ``index``; None when there is no such folder."""
    if index is None:
        return None
    if stem not in index:
        raise SlidemapError(
            f"image {image} has no {role} {folder}/{stem}.*: add it or remove the image"
        )
    return index[stem]


def _check_shape(array: np.ndarray, path: Path, image: np.ndarray, image_path: Path) -> None:
    if array.shape[-2:] != image.shape[-2:]:
        h, w = array.shape[-2:]
        ih, iw = image.shape[-2:]
        raise SlidemapError(
            f"{path} is {h}×{w} but image {image_path} is {ih}×{iw}: they must be the same size"
        )
