"""An interactive map of a prediction, for ``slidemap report --interactive``: pan, zoom, click a
landslide for its rank, area and probability.

Leaflet (vendored under ``vendor/leaflet``, BSD 2-Clause) and every datum are inlined into the
page, so it works offline: no tile server, nothing fetched. The imagery is warped to Web
Mercator, the CRS Leaflet draws in, so that the picture lines up with the outlines exactly; the
outlines are reprojected to longitude/latitude (GeoJSON).
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import shapely
from PIL import Image
from rasterio.crs import CRS
from rasterio.warp import transform_geom

from slidemap.report.mapview import OUTLINE, WGS84, backdrop_picture, lonlat, map_grid
from slidemap.report.markup import square_metres

VENDOR = Path(__file__).resolve().parent / "vendor" / "leaflet"
WEB_MERCATOR = "EPSG:3857"
MAX_FEATURES = 2000  # the largest landslides drawn; the page stays a few MB
MAP_SIDE = 1600

CSS = """
.slidemap-map { height: 620px; background: #d9dde2; border-radius: 6px; }
.slide-rank { background: #fff; border: 1.5px solid #000; border-radius: 50%; font: bold 11px
              system-ui, sans-serif; text-align: center; line-height: 17px; }
"""

SCRIPT = """
(() => {
  const data = %s;
  const map = L.map(data.id, {attributionControl: false, zoomSnap: 0.25});
  L.imageOverlay(data.picture, data.bounds).addTo(map);
  L.geoJSON(data.outlines, {
    style: {color: data.colour, weight: 2.5, fillOpacity: 0.08},
    onEachFeature: (feature, layer) => layer.bindPopup(feature.properties.text),
  }).addTo(map);
  for (const [rank, lat, lon] of data.labels) {
    L.marker([lat, lon], {interactive: false, icon: L.divIcon(
      {className: "slide-rank", html: String(rank), iconSize: [20, 20]})}).addTo(map);
  }
  L.control.scale({imperial: false}).addTo(map);
  map.fitBounds(data.bounds);
})();
"""


def leaflet() -> tuple[str, str]:
    """Leaflet's CSS and JavaScript, without the source-map comment (nothing to fetch)."""
    script = (VENDOR / "leaflet.js").read_text(encoding="utf-8")
    script = re.sub(r"//# sourceMappingURL=\S+\s*$", "", script)
    return (VENDOR / "leaflet.css").read_text(encoding="utf-8"), script


def interactive_map(stem: str, image: str | None, prob: Path, mask: Path, crs: CRS | None,
                    ranked: list[shapely.Geometry], rows: list[tuple[float, float]],
                    labelled: int) -> str:
    """The HTML of the interactive map of scene ``stem`` (a ``<div>``, styles and scripts), or
    a note why not.

    ``ranked``: outlines, largest first; ``rows``: (area in m², mean probability) of each;
    the first ``labelled`` get their rank written on the map, as on the static one.
    """
    if crs is None:
        return "<p class='note'>No interactive map: the prediction has no CRS.</p>"
    grid = map_grid(mask, MAP_SIDE, WEB_MERCATOR)
    picture, backdrop, _ = backdrop_picture(image, prob, grid)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=85)
    left, right, bottom, top = grid.extent
    lon, lat = lonlat(grid.crs, [left, right], [bottom, top])
    features = []
    for rank, (geometry, (area, prob_mean)) in enumerate(
            zip(ranked[:MAX_FEATURES], rows, strict=False), start=1):
        shape = transform_geom(crs, WGS84, shapely.geometry.mapping(geometry), precision=7)
        text = f"<b>#{rank}</b><br>{square_metres(area)}<br>mean probability {prob_mean:.2f}"
        features.append({"type": "Feature", "geometry": shape, "properties": {"text": text}})
    points = shapely.point_on_surface(list(ranked[:labelled]))
    label_lon, label_lat = lonlat(crs, shapely.get_x(points), shapely.get_y(points))
    data = {
        "id": "map-" + re.sub(r"\W", "_", stem),  # one per scene of the folder
        "picture": "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode(),
        "bounds": [[float(lat[0]), float(lon[0])], [float(lat[1]), float(lon[1])]],
        "outlines": {"type": "FeatureCollection", "features": features},
        "labels": [[rank, round(float(y), 7), round(float(x), 7)] for rank, (x, y) in
                   enumerate(zip(label_lon, label_lat, strict=True), start=1)],
        "colour": OUTLINE,
    }
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    css, script = leaflet()
    shown = (f"{len(features):,} largest of {len(ranked):,}" if len(ranked) > len(features)
             else f"all {len(features):,}")
    return (f"<h3>Interactive map</h3><figure class='map'>"
            f"<div class='slidemap-map' id='{data['id']}'></div>"
            f"<figcaption>Pan and zoom; click an outline for its rank, area and probability. "
            f"{shown} outlines ({backdrop}, warped to Web Mercator). Drawn with Leaflet "
            f"1.9.4 (BSD 2-Clause), bundled in this page.</figcaption></figure>"
            f"<style>{css}{CSS}</style><script>{script}</script>"
            f"<script>{SCRIPT % payload}</script>")
