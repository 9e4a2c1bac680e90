"""QGIS styles of a prediction's outputs, which QGIS reads as each layer's default style when it
opens the file: the inventory's as a ``.qml`` file and in the GeoPackage's ``layer_styles``
table, the rasters' as ``<raster name without .tif>.qml`` beside them.

Outlines in red over a translucent fill, so the imagery underneath stays visible. The SLD beside
the QML in ``layer_styles`` serves other tools (GeoServer, ArcGIS Pro's import). The mask's style
is its colour table with the alpha a GeoTIFF palette cannot hold (GDAL writes every entry
opaque, so without it QGIS paints the background white over the imagery); the probability's is
the report's colour ramp over 0-1.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
from matplotlib import colormaps

from slidemap.io.rasters import CLASS_NAMES, MASK_COLOURS, MASK_NODATA

FILL = "230,60,30,70"
OUTLINE = "200,30,10,255"
OUTLINE_MM = 0.5

QML = f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.34.0" styleCategories="Symbology|Labeling">
  <renderer-v2 type="singleSymbol" symbollevels="0" enableorderby="0" forceraster="0">
    <symbols>
      <symbol type="fill" name="0" alpha="1" clip_to_extent="1" force_rhr="0">
        <layer class="SimpleFill" enabled="1" locked="0" pass="0">
          <Option type="Map">
            <Option type="QString" name="color" value="{FILL}"/>
            <Option type="QString" name="style" value="solid"/>
            <Option type="QString" name="outline_color" value="{OUTLINE}"/>
            <Option type="QString" name="outline_style" value="solid"/>
            <Option type="QString" name="outline_width" value="{OUTLINE_MM}"/>
            <Option type="QString" name="outline_width_unit" value="MM"/>
            <Option type="QString" name="joinstyle" value="round"/>
          </Option>
        </layer>
      </symbol>
    </symbols>
  </renderer-v2>
  <labeling type="simple">
    <settings calloutType="simple">
      <text-style fieldName="$id" isExpression="1" fontSize="8" textColor="{OUTLINE}"/>
      <placement placement="0" dist="0"/>
      <rendering scaleVisibility="1" scaleMin="1" scaleMax="10000" drawLabels="1"/>
    </settings>
  </labeling>
  <layerGeometryType>2</layerGeometryType>
</qgis>
"""


def _sld(layer: str) -> str:
    red, green, blue, alpha = (int(v) for v in FILL.split(","))
    outline = "#{:02x}{:02x}{:02x}".format(*(int(v) for v in OUTLINE.split(",")[:3]))
    width_px = OUTLINE_MM * 96 / 25.4
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<StyledLayerDescriptor version="1.1.0" xmlns="http://www.opengis.net/sld"
  xmlns:se="http://www.opengis.net/se" xmlns:ogc="http://www.opengis.net/ogc">
  <NamedLayer><se:Name>{layer}</se:Name><UserStyle><se:Name>{layer}</se:Name>
    <se:FeatureTypeStyle><se:Rule><se:Name>landslide</se:Name><se:PolygonSymbolizer>
      <se:Fill><se:SvgParameter name="fill">#{red:02x}{green:02x}{blue:02x}</se:SvgParameter>
        <se:SvgParameter name="fill-opacity">{alpha / 255:.2f}</se:SvgParameter></se:Fill>
      <se:Stroke><se:SvgParameter name="stroke">{outline}</se:SvgParameter>
        <se:SvgParameter name="stroke-width">{width_px:.1f}</se:SvgParameter></se:Stroke>
    </se:PolygonSymbolizer></se:Rule></se:FeatureTypeStyle>
  </UserStyle></NamedLayer>
</StyledLayerDescriptor>
"""


# The table as QGIS creates it in a GeoPackage (QgsOgrProviderUtils / "Save as default").
LAYER_STYLES = """CREATE TABLE IF NOT EXISTS layer_styles (
  id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), f_table_schema TEXT(256),
  f_table_name TEXT(256), f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT,
  styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), ui TEXT(30),
  update_time DATETIME DEFAULT CURRENT_TIMESTAMP)"""


def store_style(gpkg: Path, layer: str, description: str) -> None:
    """Add ``layer``'s default style to the GeoPackage (registered in ``gpkg_contents`` as an
    attributes table, as the GeoPackage standard asks of every user table)."""
    with contextlib.closing(sqlite3.connect(gpkg)) as db, db:
        (column,) = db.execute("SELECT column_name FROM gpkg_geometry_columns WHERE "
                               "table_name = ?", (layer,)).fetchone()
        db.execute(LAYER_STYLES)
        db.execute("INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                   "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, "
                   "description, owner) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '')",
                   (layer, column, layer, QML, _sld(layer), description))
        db.execute("INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, "
                   "description) VALUES ('layer_styles', 'attributes', 'layer_styles', "
                   "'QGIS layer styles')")


def write_qml(path: Path, qml: str = QML) -> None:
    path.write_text(qml)


PROB_COLOURS = "magma"  # the report's probability preview and its colour bar
PROB_STOPS = 11  # linear between stops every 0.1: within 4/255 of the colour bar's colours
# Fixed limits (minMaxOrigin None), or QGIS stretches the ramp to each scene's range.
_LIMITS = """      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>"""


def _hex(red: int, green: int, blue: int) -> str:
    return f"#{red:02x}{green:02x}{blue:02x}"


def _raster_qml(kind: str, body: str) -> str:
    """A style of band 1 drawn by QGIS's ``kind`` renderer (``body``: its classes)."""
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.34.0" styleCategories="Symbology">
  <pipe>
    <rasterrenderer {kind} band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
{_LIMITS}
{body}
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" grayscaleMode="0" colorizeOn="0" colorizeRed="255"
                   colorizeGreen="128" colorizeBlue="128" colorizeStrength="100"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def _mask_qml() -> str:
    """A paletted renderer of the mask's colour table, alpha included: background and nodata
    see-through, landslides in the inventory's red."""
    names = {**CLASS_NAMES, MASK_NODATA: "no data"}
    entries = "".join(
        f'        <paletteEntry value="{value}" color="{_hex(*colour[:3])}" '
        f'alpha="{colour[3]}" label={quoteattr(names[value])}/>\n'
        for value, colour in sorted(MASK_COLOURS.items()))
    return _raster_qml('type="paletted"',
                       f"      <colorPalette>\n{entries}      </colorPalette>")


def _probability_qml() -> str:
    """A pseudocolour ramp over probabilities 0-1: QGIS applies the band's GDAL scale (1/254
    of the uint8 file) before the ramp, so one style serves the uint8 and float32 files."""
    stops = np.linspace(0.0, 1.0, PROB_STOPS)
    colours = np.round(colormaps[PROB_COLOURS](stops)[:, :3] * 255).astype(int)
    items = "".join(
        f'          <item value="{stop:g}" color="{_hex(*colour)}" alpha="255" '
        f'label="{stop:g}"/>\n' for stop, colour in zip(stops, colours.tolist(), strict=True))
    return _raster_qml(
        'type="singlebandpseudocolor" classificationMin="0" classificationMax="1"',
        "      <rastershader>\n"
        '        <colorrampshader colorRampType="INTERPOLATED" classificationMode="1" clip="0"'
        ' minimumValue="0" maximumValue="1" labelPrecision="1">\n'
        f"{items}        </colorrampshader>\n      </rastershader>")


MASK_QML = _mask_qml()
PROB_QML = _probability_qml()


def write_raster_styles(prob_style: Path, mask_style: Path) -> None:
    """The probability's and the mask's QGIS styles, written beside those rasters by every
    command that writes them."""
    write_qml(prob_style, PROB_QML)
    write_qml(mask_style, MASK_QML)
