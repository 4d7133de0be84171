"""Readers and tools around the ``bigearthnet_txt`` builder (one job per module)."""

#: modules whose code defines the generated data (hashed into the cache key)
MODULES = ("annotations", "archives", "bands", "layout", "raster", "sources", "store", "text")
