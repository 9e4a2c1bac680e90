"""Which input channels a model expects, and how to stack them from a sample.

A model file stores an ``InputSpec`` so that prediction on a new scene knows exactly which image
bands to read, which terrain channels to add (elevation, relief, slope) and at which ground
resolution to work.
Patch data has no ground resolution: ``scale`` says by how much patches are up-sampled before the
model (scale promotion, see ``slidemap.data.scaling``). Image bands of Landslide4Sense patches
are numbered as in its 14-channel stack (B2 = 2, B8 = 8, B12 = 12); slope and DEM are the flags.

``relief_m`` adds the DEM as *relief*: elevation above the mean elevation within that many
metres (``terrain.relief``), or one channel per radius for a list of radii. It carries the
terrain's shape without its altitude, so a model does not tie landslides to the altitude of the
valley it was trained in. ``curvature`` and ``roughness_m`` add two more descriptors of form
that no shift of the DEM changes (``terrain.laplacian_curvature``, ``terrain.roughness``).

``optical: chromaticity`` replaces each image band b by its share of the bands' sum,
(b + 1) / (sum + C) for C bands: the colour without the brightness. Landslides in one scene can
be brighter than their surroundings and in the next darker (sun angle, moisture, exposure),
while their colour (greyer than vegetation) holds; a model that never sees brightness cannot
learn the wrong cue. The offset of one unit per band (in 8-bit imagery) keeps near-black shadow
pixels from turning into noise.

``optical: scene`` standardises each image band by its scene's own mean and deviation (one pair
per scene, from an overview, so windows have no seams; a patch by its own pixels): a scene
brighter or with more contrast than the training scenes gives the same channels.
"""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window

from slidemap.data.scene import Scene
from slidemap.schema.config import InputSpec

CHROMA_OFFSET = 1.0


def read_inputs(scene: Scene, window: Window, spec: InputSpec, factor: int
                ) -> dict[str, np.ndarray]:
    """Read the sample that ``spec``'s channels are stacked from: one place knows the mapping."""
    sample = scene.read(window, spec.image_bands, factor, dem=spec.dem, slope=spec.slope,
                        relief_m=spec.relief_m, curvature=spec.curvature,
                        roughness_m=spec.roughness_m)
    if spec.optical == "scene":
        sample["optical_stats"] = scene.optical_stats(spec.image_bands)
    return sample


def stack_channels(sample: dict[str, np.ndarray], spec: InputSpec) -> np.ndarray:
    """Stack the sample's arrays into the model's (C, H, W) float32 input, in ``spec`` order."""
    image = sample["image"]
    if spec.optical == "chromaticity":
        image = chromaticity(image)
    elif spec.optical == "scene":
        image = standardised(image, sample.get("optical_stats"), sample.get("valid"))
    parts = [image]
    for key, wanted in (("dem", spec.dem), ("relief", spec.relief_m), ("slope", spec.slope),
                        ("curvature", spec.curvature), ("roughness", spec.roughness_m)):
        if wanted:
            parts.append(sample[key])
    return np.concatenate(parts, axis=0).astype(np.float32, copy=False)


def standardised(image: np.ndarray, stats: np.ndarray | None,
                 valid: np.ndarray | None = None) -> np.ndarray:
    """Each band minus its scene mean, over its scene standard deviation (``stats``: (2, C),
    mean and std); without ``stats`` (a patch, which is its own scene) those of the valid pixels
    of ``image`` itself."""
    x = np.asarray(image, dtype=np.float32)
    if stats is None:
        use = np.isfinite(x).all(axis=0) if valid is None else valid & np.isfinite(x).all(axis=0)
        pixels = x[:, use] if use.any() else x.reshape(x.shape[0], -1)
        stats = np.stack([pixels.mean(axis=1), pixels.std(axis=1)])
    mean = np.asarray(stats[0], dtype=np.float32)[:, None, None]
    std = np.maximum(np.asarray(stats[1], dtype=np.float32), 1e-6)[:, None, None]
    return (x - mean) / std


def chromaticity(image: np.ndarray) -> np.ndarray:
    """Each band's share of the bands' sum (C, H, W), offset so that black stays defined."""
    shifted = np.asarray(image, dtype=np.float32) + CHROMA_OFFSET
    return shifted / shifted.sum(axis=0, keepdims=True)
