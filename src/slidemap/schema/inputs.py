"""Which input channels a model expects: the ``inputs:`` of a run config and of a model file.

A model file stores an ``InputSpec`` so that prediction on a new scene knows exactly which image
bands to read, which terrain channels to add and at which ground resolution to work; the
meaning of every field is in configs/README.md (generated from the descriptions below).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from slidemap.schema.errors import validated
from slidemap.schema.values import MAX_PATCH_SCALE, OpticalMode


def not_bool(value: Any) -> Any:
    """YAML's true and false are not numbers here (pydantic would read them as 1 and 0)."""
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


# A finite number; YAML 1.1 reads 2e-3 as text, which is taken as the number it spells.
Number = Annotated[float, BeforeValidator(not_bool), Field(allow_inf_nan=False, strict=False)]
Metres = Annotated[Number, Field(gt=0)]


class InputSpec(BaseModel):
    """Model inputs: image bands (1-based), optional DEM, relief and slope, working resolution
    (scenes) and up-sampling factor (patches)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_bands: tuple[Annotated[StrictInt, Field(ge=1)], ...] = Field(
        default=(1, 2, 3), min_length=1,
        description="1-based image bands, the first model channels")
    dem: StrictBool = Field(default=False, description=(
            "add the DEM (elevation) as a channel after the bands"))
    slope: StrictBool = Field(default=False, description=(
            "add slope in degrees, computed from the DEM, as the last channel"))
    resolution_m: Metres | None = Field(default=None, description=(
            "working ground resolution in metres (scenes are decimated to it); `null`: native"))
    scale: Metres = Field(default=1.0, le=MAX_PATCH_SCALE, description=(
            "scale promotion of patches (scenes use `resolution_m`): patches and their labels "
            "are up-sampled by this factor before the model (e.g. `2.0` for 128 px "
            "Landslide4Sense patches; below 1 shrinks upscaled imagery, to no less than 16 px "
            "a side, the smallest training window; at most 64), and "
            "predictions are averaged back onto the patch grid, where they are scored. Stored "
            "in the model, so `predict` does the same"))
    optical: OpticalMode = Field(default="raw", description=(
            "`chromaticity`: each image band divided by the bands' sum (plus one unit per band),"
            " i.e. colour without brightness. `scene`: per-scene photometric normalisation, each"
            " band minus its mean over the scene's valid pixels and divided by its standard "
            "deviation (from an overview of at most 1024 px a side, so every window of a scene "
            "gets the same; a patch is normalised by its own pixels): a scene twice as bright or"
            " with another offset gives the same channels (channels `scene1`, …). Stored in the "
            "model, so `predict` does the same"))
    relief_m: Metres | tuple[Metres, ...] | None = Field(
        default=None, description=("scenes only: add *relief*, the elevation above the mean "
                                   "elevation within this radius in metres (a topographic "
                                   "position index), after `dem`; a list of radii, e.g. `[8, 32,"
                                   " 128]`, adds one channel each (`relief8m`, …), which "
                                   "describe the ground's form at several sizes (a scarp, a "
                                   "slide, a valley side). Relief keeps the terrain's shape but "
                                   "not its altitude, so the model's map does not change when "
                                   "the DEM is shifted (another vertical datum, a site higher in"
                                   " the valley); use it instead of `dem` for new sites. "
                                   "Computed from a halo around each window, so prediction sees "
                                   "what training saw"))
    curvature: StrictBool = Field(default=False, description=(
            "scenes only: add the surface curvature (negative Laplacian of the DEM, 1/100 m; "
            "positive on crests and scarp tops, negative in hollows), after `slope`. Independent"
            " of the DEM's datum, computed with a one-pixel halo"))
    roughness_m: Metres | None = Field(default=None, description=(
            "scenes only: add roughness, the standard deviation of the elevations within this "
            "radius in metres (broken ground of scarps and debris against smooth slopes), after "
            "`curvature`. Independent of the DEM's datum, computed with a halo"))

    @field_validator("relief_m")
    @classmethod
    def _distinct_radii(cls, value: float | tuple[float, ...] | None
                        ) -> float | tuple[float, ...] | None:
        if isinstance(value, tuple) and (not value or len(set(value)) != len(value)):
            raise ValueError("relief_m must be a radius in metres > 0, a list of distinct radii, "
                             "or null")
        return value

    @model_validator(mode="after")
    def _chromaticity_needs_two_bands(self) -> InputSpec:
        if self.optical == "chromaticity" and len(self.image_bands) < 2:
            raise ValueError("optical: chromaticity needs at least two image bands")
        return self

    @property
    def channels(self) -> list[str]:
        prefix = {"raw": "band", "chromaticity": "chroma", "scene": "scene"}[self.optical]
        names = [f"{prefix}{b}" for b in self.image_bands]
        if isinstance(self.relief_m, tuple):  # several radii: one channel each, named by it
            relief_names = [f"relief{r:g}m" for r in self.relief_m]
        else:
            relief_names = ["relief"] * bool(self.relief_m)
        return (names + ["dem"] * self.dem + relief_names + ["slope"] * self.slope
                + ["curvature"] * self.curvature + ["roughness"] * bool(self.roughness_m))

    @property
    def needs_dem(self) -> bool:
        return (self.dem or self.slope or bool(self.relief_m) or self.curvature
                or bool(self.roughness_m))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        """From a model file's sidecar (checked by ``slidemap.io.sidecar``), numbers as stored."""
        relief = data.get("relief_m")
        return validated(cls, {
            "image_bands": tuple(int(b) for b in data.get("image_bands", (1, 2, 3))),
            "dem": bool(data.get("dem", False)),
            "slope": bool(data.get("slope", False)),
            "resolution_m": data.get("resolution_m"),
            "scale": float(data.get("scale", 1.0)),
            "optical": str(data.get("optical", "raw")),
            "relief_m": tuple(float(r) for r in relief) if isinstance(relief, list | tuple)
            else None if relief is None else float(relief),
            "curvature": bool(data.get("curvature", False)),
            "roughness_m": None if data.get("roughness_m") is None
            else float(data["roughness_m"]),
        }, "inputs")
