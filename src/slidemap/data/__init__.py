"""Data sources and transforms: scenes, patches, DEM alignment, slope, windows, normalisation."""
