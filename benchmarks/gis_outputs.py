"""Sizes, COG validity and inventory shape of predict outputs on Jinsha region B (see gis-outputs.md)."""
import os, pyogrio, shapely, numpy as np
from rio_cogeo.cogeo import cog_validate
img = "../shared/data/jinsha/region_B_image.tif"
print("input image", os.path.getsize(img))
for d in ("measure_float32", "measure_uint8", "measure_raw"):
    base = f"out/{d}/region_B_image"
    print(d, "prob", os.path.getsize(base + "_prob.tif"), "mask", os.path.getsize(base + "_mask.tif"),
          "cog", cog_validate(base + "_prob.tif", strict=True)[0], cog_validate(base + "_mask.tif", strict=True)[0])
    meta, _, geom, values = pyogrio.raw.read(base + "_landslides.gpkg", layer="landslides")
    f = dict(zip(meta["fields"], values))
    g = shapely.from_wkb(geom)
    print("  polygons", len(g), "vertices", int(shapely.get_num_coordinates(g).sum()),
          "under 10 m2", int((f["area_m2"] < 10).sum()), "nan slope", int(np.isnan(f["mean_slope_deg"]).sum()))
