"""The prepared cache: the imagery store per source, its file format, the PairBands feature that points into it,
the formats that keep band dtypes, cache folders, and the process and disk guards of preparing."""
