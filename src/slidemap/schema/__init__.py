"""The typed config: every setting of a run, its allowed values and ranges, in one place.

The bottom layer: it imports nothing of slidemap but ``slidemap.errors``, so every other layer
may read settings from it. ``slidemap.schema.config`` holds the models and the loader,
``slidemap.schema.values`` the value lists (cheap to import: no pydantic, for the CLI's start).
"""
