"""Files: safe model files, raster and vector writers that never leave half-written outputs."""
