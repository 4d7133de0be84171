"""The imagery side: where bands live in archives and folders, reading them, GeoTIFF decoding and resampling,
map grids, quicklooks."""
