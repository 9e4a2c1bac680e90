"""Time and shape of the landslide inventory built from a prediction's mask and probability.

Builds the inventory as ``slidemap predict`` does (``build_inventory``, strips in the default
memory budget) and prints its slides, CPU seconds, vertices, multi-part outlines and the area
where two outlines overlap (shapely, pairwise over an STRtree). ``--min-area`` and
``--simplify`` default to the values the prediction's GeoPackage records. Run it at two commits
(``PYTHONPATH=<checkout>/src``) to compare them on the same rasters (gis-outputs.md)::

    .venv/bin/python benchmarks/inventory.py out/map/scene_mask.tif out/map/scene_prob.tif
"""

from __future__ import annotations

import argparse
import re
import time
import warnings
from pathlib import Path

import numpy as np
import pyogrio
import shapely

from slidemap.infer.vectorize import build_inventory


def recorded(mask: Path) -> tuple[float, float]:
    """(min area m², simplify m) the GeoPackage beside ``mask`` records, else (0, 0)."""
    gpkg = mask.with_name(mask.name.replace("_mask.tif", "_landslides.gpkg"))
    if not gpkg.exists():
        return 0.0, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tags = pyogrio.read_info(gpkg, layer="landslides")["layer_metadata"] or {}
    found = re.search(r"min_area_m2=(\S+) simplify_m=(\S+)", tags.get("SLIDEMAP_INVENTORY", ""))
    return (float(found.group(1)), float(found.group(2))) if found else (0.0, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mask", type=Path)
    parser.add_argument("prob", type=Path)
    parser.add_argument("--min-area", type=float, help="m² (default: as recorded)")
    parser.add_argument("--simplify", type=float, help="m (default: as recorded)")
    args = parser.parse_args()
    min_area, simplify = recorded(args.mask)
    min_area = min_area if args.min_area is None else args.min_area
    simplify = simplify if args.simplify is None else args.simplify
    started = time.process_time()
    inventory = build_inventory(args.mask, args.prob, min_area, simplify)
    cpu = time.process_time() - started
    outlines = np.array(inventory.geometries, dtype=object)
    first, second = shapely.STRtree(outlines).query(outlines, predicate="intersects")
    pairs = first < second
    overlap = shapely.area(shapely.intersection(outlines[first[pairs]], outlines[second[pairs]]))
    print(f"min area {min_area:g} m², simplify {simplify:g} m: {len(outlines)} slides, "
          f"{cpu:.1f} CPU s, {int(shapely.get_num_coordinates(outlines).sum())} vertices, "
          f"{int((shapely.get_num_geometries(outlines) > 1).sum())} multi-part, "
          f"overlap {float(overlap.sum()):.3f} map units² in {int((overlap > 0).sum())} pairs")


if __name__ == "__main__":
    main()
