"""Which input channels a model expects, and how to stack them from a sample.

A model file stores an ``InputSpec`` so that prediction on a new scene knows exactly which image
bands to read, which terrain channels to add (elevation, relief, slope) and at which ground
resolution to work.
Patch data has no ground resolution: ``scale`` says by how much patches are up-sampled before the
model (scale promotion, see ``slidemap.data.scaling``). Image bands of Landslide4Sense patches
are numbered as in its 14-channel stack (B2 = 2, B8 = 8, B12 = 12); slope and DEM are the flags.

``relief_m`` adds the DEM as *relief*: elevation above the mean elevation within that many
metres (``terrain.relief``). It carries the terrain's shape without its altitude, so a model does
not tie landslides to the altitude of the valley it was trained in.

``optical: chromaticity`` replaces each image band b by its share of the bands' sum,
(b + 1) / (sum + C) for C bands: the colour without the brightness. Landslides in one scene can
be brighter than their surroundings and in the next darker (sun angle, moisture, exposure),
while their colour (greyer than vegetation) holds; a model that never sees brightness cannot
learn the wrong cue. The offset of one unit per band (in 8-bit imagery) keeps near-black shadow
pixels from turning into noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from rasterio.windows import Window

from slidemap.errors import SlidemapError

if TYPE_CHECKING:
    from slidemap.data.scene import Scene

OPTICAL_MODES = ("raw", "chromaticity")
CHROMA_OFFSET = 1.0


@dataclass(frozen=True)
class InputSpec:
    """Model inputs: image bands (1-based), optional DEM, relief and slope, working resolution
    (scenes) and up-sampling factor (patches)."""

    image_bands: tuple[int, ...] = (1, 2, 3)
    dem: bool = False
    slope: bool = False
    resolution_m: float | None = None
    scale: float = 1.0
    optical: str = "raw"
    relief_m: float | None = None

    def __post_init__(self) -> None:
        if self.optical not in OPTICAL_MODES:
            raise SlidemapError(f"inputs optical {self.optical!r} is not known: use one of "
                                f"{', '.join(OPTICAL_MODES)}")
        if self.optical == "chromaticity" and len(self.image_bands) < 2:
            raise SlidemapError("inputs optical: chromaticity needs at least two image bands")
        if self.relief_m is not None and not self.relief_m > 0:
            raise SlidemapError(f"inputs relief_m must be a radius in metres > 0 or null, got "
                                f"{self.relief_m!r}")

    @property
    def channels(self) -> list[str]:
        prefix = "chroma" if self.optical == "chromaticity" else "band"
        names = [f"{prefix}{b}" for b in self.image_bands]
        return (names + ["dem"] * self.dem + ["relief"] * bool(self.relief_m)
                + ["slope"] * self.slope)

    @property
    def needs_dem(self) -> bool:
        return self.dem or self.slope or bool(self.relief_m)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        return cls(
            image_bands=tuple(int(b) for b in data.get("image_bands", (1, 2, 3))),
            dem=bool(data.get("dem", False)),
            slope=bool(data.get("slope", False)),
            resolution_m=data.get("resolution_m"),
            scale=float(data.get("scale", 1.0)),
            optical=str(data.get("optical", "raw")),
            relief_m=None if data.get("relief_m") is None else float(data["relief_m"]),
        )


def read_inputs(scene: Scene, window: Window, spec: InputSpec, factor: int
                ) -> dict[str, np.ndarray]:
    """Read the sample that ``spec``'s channels are stacked from: one place knows the mapping."""
    return scene.read(window, spec.image_bands, factor, dem=spec.dem, slope=spec.slope,
                      relief_m=spec.relief_m)


def stack_channels(sample: dict[str, np.ndarray], spec: InputSpec) -> np.ndarray:
    """Stack the sample's arrays into the model's (C, H, W) float32 input, in ``spec`` order."""
    image = sample["image"]
    parts = [chromaticity(image) if spec.optical == "chromaticity" else image]
    if spec.dem:
        parts.append(sample["dem"])
    if spec.relief_m:
        parts.append(sample["relief"])
    if spec.slope:
        parts.append(sample["slope"])
    return np.concatenate(parts, axis=0).astype(np.float32, copy=False)


def chromaticity(image: np.ndarray) -> np.ndarray:
    """Each band's share of the bands' sum (C, H, W), offset so that black stays defined."""
    shifted = np.asarray(image, dtype=np.float32) + CHROMA_OFFSET
    return shifted / shifted.sum(axis=0, keepdims=True)
