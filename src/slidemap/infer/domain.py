"""Does a scene lie within the elevations, and its image within the values, a model was
trained on?

A model with a ``dem`` channel reads absolute elevation, normalised with its training statistics,
and leans on it: the slides of its training valley lie in one altitude band
(``benchmarks/experiments.md``, *Elevation or relief*), and a DEM shifted by 60 m already costs a
third of the F1. A scene far
outside that band is still predicted, but badly, and nothing in the outputs would show it; this
check says so before the prediction starts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from slidemap.data.channels import InputSpec
from slidemap.data.normalization import BandStats
from slidemap.data.scene import MIN_DEM_COVER, Scene

SPREAD = 3.0  # training standard deviations of elevation around the training mean
BLACK_SHARE = 0.1  # a tenth of the sampled pixels 0 in every band: a collar, not shadows
NARROW = 20.0  # an image band varying this many times less than in training is on another scale
EARTH_ELEVATIONS_M = (-1000.0, 9000.0)  # dry land spans -430 m to 8849 m: beyond, a fill value
FILL_SHARE = 0.5  # of those beyond: fill values this common together are voids, else another unit
FILL_VALUE_SHARE = 0.05  # of those beyond: one value this common is a fill (a mosaic may hold 3)
FILL_REPEATS = 2  # sampled pixels a fill holds at least: a void is an area, a lone pixel is ground
OBLONG = 1.1  # pixels this much longer on the ground one way than the other are read squashed
RGB = ("red", "green", "blue")  # what bands 1, 2, 3 of an RGB model's training imagery were


def scene_warnings(scene: Scene, spec: InputSpec, stats: Sequence[BandStats],
                   scene_normalised: bool = False) -> list[str]:
    """Every warning below that ``scene`` earns before a model reads it (``stats``: one per
    model); those against the models' training statistics are left out when the scene is
    normalised with its own (``--normalise scene``)."""
    messages = [band_order_mismatch(scene, spec), unmasked_collar(scene, spec),
                unmasked_voids(scene), dem_gaps(scene), oblong_pixels(scene),
                scene.coarser_than(spec.resolution_m)]
    if not scene_normalised:
        messages += [elevation_mismatch(scene, spec, stats), image_mismatch(scene, spec, stats)]
    return [message for message in messages if message]


def elevation_mismatch(scene: Scene, spec: InputSpec, stats: Sequence[BandStats]) -> str | None:
    """A one-line warning when the scene's median elevation lies more than ``SPREAD`` training
    standard deviations from the training mean of any of the models (``stats``: one per model);
    None when it does not, when the models read no absolute elevation or when the DEM has no data
    (refused later, with its own message)."""
    if "dem" not in spec.channels:
        return None
    index = spec.channels.index("dem")
    elevation = scene.dem_sample()
    finite = elevation[np.isfinite(elevation)]
    if finite.size == 0:
        return None
    median = float(np.median(finite))
    trained = _trained_range(median, stats, index)
    if trained is not None:
        low, high = trained
        return (f"the DEM {scene.dem_path} lies at {median:.0f} m (median), outside the "
                f"{low:.0f}-{high:.0f} m the model was "
                "trained on: it reads absolute elevation, so expect a poor map; use the "
                "default model, which reads the terrain's form instead "
                "(models/slidemap-jinsha-unet-terrain), or one trained without dem")
    return None


def unmasked_voids(scene: Scene) -> str | None:
    """A one-line warning when the DEM holds elevations no ground on Earth has (SRTM's -32768
    voids, a -9999 fill) counted as data: without a nodata value that marks them, slope,
    relief and roughness around every void are cliffs thousands of metres high, and the map
    of the whole neighbourhood goes wrong with nothing in the outputs to show it. Elevations
    beyond Earth's of many values are no fill but another unit (centimetres, feet undeclared):
    they were named by their highest value, as a void to set as nodata. A few common values
    are voids however many (tiles of a mosaic filled -9999, -32768 and 9999 were called another
    unit); a value held by one sampled pixel is no fill (a DEM in feet with a few sampled
    pixels above 9000 ft had each named a void). None without a DEM or when its sampled
    elevations are all plausible."""
    if not scene.has_dem:
        return None
    elevation = scene.dem_sample()
    finite = elevation[np.isfinite(elevation)]
    low, high = EARTH_ELEVATIONS_M
    outside = finite[(finite < low) | (finite > high)]
    if outside.size == 0:
        return None
    values, counts = np.unique(outside, return_counts=True)
    fills = counts >= max(outside.size * FILL_VALUE_SHARE, FILL_REPEATS)
    if counts[fills].sum() < outside.size * FILL_SHARE:  # no fills: elevations in another unit
        return (f"the DEM {scene.dem_path} has {outside.size / finite.size:.1%} of its sampled "
                f"pixels at {values[0]:g} to {values[-1]:g} m, elevations no ground has: if "
                "it is in another unit, declare it (gdal_edit.py -units cm, ft or dm), or "
                "slope and relief are read several times too steep")
    commonest = np.argsort(-counts[fills], kind="stable")
    value = float(values[fills][commonest[0]])
    named = ", ".join(f"{v:g}" for v in values[fills][commonest])
    return (f"the DEM {scene.dem_path} has {outside.size / finite.size:.1%} of its sampled "
            f"pixels at {named} m, {'elevations' if fills.sum() > 1 else 'an elevation'} no "
            "ground has, counted as data: if they are "
            f"voids, set its nodata value (e.g. gdal_edit.py -a_nodata {value:g} "
            f"{scene.dem_path}), or slope and relief around them are nonsense")


def dem_gaps(scene: Scene) -> str | None:
    """A one-line warning when the DEM has data under less than ``MIN_DEM_COVER`` of the
    image's sampled valid pixels although its extent covers the image: a DEM tile with a
    nodata collar, a mosaic missing a tile or one large void maps most of the scene as no data,
    and the summary ("0 landslides") would read as a finding. None without a DEM, where the
    extent warning was already given (``Scene`` warns on opening it), or where the sample holds
    no elevation at all (refused later, with its own message)."""
    if not scene.has_dem or scene.dem_extent_cover < MIN_DEM_COVER:
        return None
    elevation = scene.dem_sample()[scene.valid_sample()]
    finite = np.isfinite(elevation)
    if not finite.any() or finite.mean() >= MIN_DEM_COVER:
        return None
    return (f"DEM {scene.dem_path} has data under only {finite.mean():.0%} of image "
            f"{scene.image_path} (sampled): the rest is mapped as no data; fill its gaps "
            "(gdal_fillnodata.py) or pass a DEM with data over the whole scene")


def oblong_pixels(scene: Scene) -> str | None:
    """A one-line warning when the scene's pixels are ``OBLONG`` times longer on the ground one
    way than the other (degrees far from the equator, a 0.5 m × 1 m product): the model takes
    every pixel for a square, so it sees the ground squashed along the longer side."""
    dx, dy = scene.pixel_size_m()
    if max(dx, dy) < OBLONG * min(dx, dy):
        return None
    side = min(dx, dy)
    return (f"the pixels of {scene.image_path} are {dx:.3g} m × {dy:.3g} m on the ground: the "
            f"model reads them as squares, so it sees the ground squashed by "
            f"{1 - min(dx, dy) / max(dx, dy):.0%} one way; warp the scene to square pixels "
            f"first (gdalwarp -tr {side:.3g} {side:.3g}, in a projected CRS such as UTM)")


def image_mismatch(scene: Scene, spec: InputSpec, stats: Sequence[BandStats]) -> str | None:
    """A one-line warning when a raw image band varies ``NARROW`` times less than in training
    (reflectance 0-1 under 8-bit statistics: its median can still lie within the training
    range), or its median lies more than ``SPREAD`` training standard deviations from the
    training mean, of any of the models: imagery on another scale (16-bit counts, reflectances,
    int16 with negative values) normalised with 8-bit statistics gives a map of nothing. A
    warning, not a silent rescaling: no linear stretch is right for every sensor, and
    ``--normalise scene`` is the honest fix when the user asks for it."""
    if spec.optical != "raw":  # chromaticity is a ratio: the scale cancels
        return None
    sample = scene.image_sample(spec.image_bands)
    for index, (band, values) in enumerate(zip(spec.image_bands, sample, strict=True)):
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return None
        median, spread = float(np.median(finite)), float(finite.std())
        narrow = _trained_spread(spread, stats, index)
        if narrow is not None:
            return (f"image {scene.image_path} band {band} varies by {spread:.3g} "
                    f"(standard deviation) around {median:g}, against {narrow:.3g} in the "
                    "model's training imagery: is it on another scale (e.g. reflectance 0-1 "
                    "for a model of 8-bit imagery)? Expect a poor map; rescale the image to "
                    "the model's range, or pass --normalise scene")
        trained = _trained_range(median, stats, index)
        if trained is not None:
            least = float(finite.min())
            negative = f", down to {least:g}" if least < 0 else ""
            return (f"image {scene.image_path} band {band} lies around {median:g} "
                    f"(median{negative}), outside the {trained[0]:g} to {trained[1]:g} the "
                    "model was trained on: expect a poor map; rescale the image to the model's "
                    "range (e.g. 8-bit), set its nodata value if negative values mean no data, "
                    "or pass --normalise scene")
    return None


def patch_set_mismatch(root: str, observed: BandStats, spec: InputSpec,
                       stats: Sequence[BandStats]) -> str | None:
    """:func:`image_mismatch` for a patch set, from its channels' ``observed`` statistics (mean
    and deviation over its valid pixels): a Landslide4Sense split of 16-bit counts, or one read
    by a model of 8-bit RGB patches, was mapped as nothing without a word. None when every
    optical channel lies within every model's training range."""
    if spec.optical != "raw":
        return None
    for index, band in enumerate(spec.image_bands):
        mean, spread = observed.mean[index], observed.std[index]
        narrow = _trained_spread(spread, stats, index)
        trained = _trained_range(mean, stats, index)
        if narrow is not None:
            against = f"a standard deviation of {spread:.3g}, against {narrow:.3g}"
        elif trained is not None:
            against = f"a mean of {mean:g}, outside the {trained[0]:g} to {trained[1]:g}"
        else:
            continue
        return (f"the patches of {root} have in band {band} {against} of the model's training "
                "data: are they on another scale, or other bands than the model read? Expect a "
                "poor map; rescale them to the model's range, or pass --normalise scene")
    return None


def band_order_mismatch(scene: Scene, spec: InputSpec) -> str | None:
    """A one-line warning when the image declares (GDAL colour interpretation) its bands 1-3 as
    colours other than the red, green and blue a model reading bands 1, 2, 3 (every RGB model
    here) takes them for: a BGR scene read as RGB gives a map of the wrong cues, whatever the
    normalisation, and nothing in the outputs would show it. A ``-b`` order is suggested only
    when red, green and blue are all declared; otherwise the declarations are listed. None
    when the bands declare no colour (gray, undefined) or the model reads other bands."""
    if tuple(spec.image_bands[:3]) != (1, 2, 3):
        return None
    declared = scene.colours[:3]
    if all(colour == want or colour not in RGB for colour, want in zip(declared, RGB, strict=True)):
        return None
    problem = (f"image {scene.image_path} declares its bands 1-3 as {', '.join(declared)}, but "
               "the model reads them as red, green, blue: expect a poor map; ")
    missing = [colour for colour in RGB if colour not in scene.colours]
    if missing:  # no order of the declared bands is red, green, blue: do not guess one
        bands = ", ".join(f"band {band} {colour}"
                          for band, colour in enumerate(scene.colours, start=1))
        return (f"{problem}it declares {bands} and no {' or '.join(missing)} band: reorder "
                "its bands so that bands 1-3 are red, green, blue (gdal_translate -b R -b G "
                f"-b B {scene.image_path} rgb.tif)")
    order = [scene.colours.index(colour) + 1 for colour in RGB]
    rest = [band for band in range(1, scene.band_count + 1) if band not in order]
    fix = " ".join(f"-b {band}" for band in [*order, *rest])
    return f"{problem}reorder them (e.g. gdal_translate {fix} {scene.image_path} rgb.tif)"


def unmasked_collar(scene: Scene, spec: InputSpec) -> str | None:
    """A one-line warning when many pixels are 0 in every band and yet count as data: an
    orthophoto's black collar without a nodata value is mapped as ground (and skews
    ``--normalise scene``), and nothing in the outputs would show it."""
    sample = scene.image_sample(spec.image_bands)
    data = np.isfinite(sample).all(axis=0)
    black = data & (sample == 0).all(axis=0)
    share = float(black.sum()) / max(1, sample.shape[1])
    if share < BLACK_SHARE:
        return None
    return (f"image {scene.image_path} has {share:.0%} of its sampled pixels black (0 in every "
            "band) counted as data: if they are no data (a collar), set its nodata value "
            f"(e.g. gdal_edit.py -a_nodata 0 {scene.image_path}), or they are mapped as ground")


def _trained_spread(spread: float, stats: Sequence[BandStats], index: int) -> float | None:
    """The first model's training standard deviation of channel ``index`` that is more than
    ``NARROW`` times ``spread``; None when no model's is."""
    for model_stats in stats:
        if spread * NARROW < model_stats.std[index]:
            return model_stats.std[index]
    return None


def _trained_range(median: float, stats: Sequence[BandStats], index: int
                   ) -> tuple[float, float] | None:
    """The first model's training range of channel ``index`` (``SPREAD`` standard deviations
    around its mean) that ``median`` lies outside; None when it lies inside every model's."""
    for model_stats in stats:
        mean, std = model_stats.mean[index], model_stats.std[index]
        if abs(median - mean) > SPREAD * std:
            return mean - SPREAD * std, mean + SPREAD * std
    return None
