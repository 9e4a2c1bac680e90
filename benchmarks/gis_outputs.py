"""Sizes, COG validity and inventory shape of predict outputs on Jinsha region B.

Reads the three output folders that gis-outputs.md's commands write (out/measure_*).
"""

import argparse
import os

import numpy as np
import pyogrio
import shapely
from rio_cogeo.cogeo import cog_validate

IMAGE = "../shared/data/jinsha/region_B_image.tif"


def main() -> None:
    # No arguments, but --help prints usage and a stray argument is refused.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    print("input image", os.path.getsize(IMAGE))
    for folder in ("measure_float32", "measure_uint8", "measure_raw"):
        base = f"out/{folder}/region_B_image"
        prob, mask = base + "_prob.tif", base + "_mask.tif"
        print(folder, "prob", os.path.getsize(prob), "mask", os.path.getsize(mask),
              "cog", cog_validate(prob, strict=True)[0], cog_validate(mask, strict=True)[0])
        meta, _, geometry, values = pyogrio.raw.read(base + "_landslides.gpkg",
                                                     layer="landslides")
        fields = dict(zip(meta["fields"], values, strict=True))
        shapes = shapely.from_wkb(geometry)
        print("  polygons", len(shapes),
              "vertices", int(shapely.get_num_coordinates(shapes).sum()),
              "under 10 m2", int((fields["area_m2"] < 10).sum()),
              "nan slope", int(np.isnan(fields["mean_slope_deg"]).sum()))


if __name__ == "__main__":
    main()
