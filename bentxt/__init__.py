"""Readers and tools around the ``bigearthnet_txt`` builder.

One stage per subpackage, one job per module; see the README's "How it works".
"""

#: public helpers, imported on first use so that ``import bentxt`` stays light. ``plot`` and ``collate`` are
#: not here: they share their submodule's name (``bentxt.tools.plot.plot``, ``bentxt.tools.collate.collate``).
_LAZY = {
    "normalize": "tools.transforms",
    "Normalize": "tools.transforms",
    "band_stats": "tools.transforms",
    "GROUP_MEAN": "tools.transforms",
    "GROUP_STD": "tools.transforms",
    "BAND_MEAN": "tools.transforms",
    "BAND_STD": "tools.transforms",
    "GeometricAugment": "tools.transforms",
    "OrientationTextError": "tools.transforms",
    "apply_op": "tools.transforms",
    "orientation_text": "tools.transforms",
    "transform_image": "tools.transforms",
    "transform_bbox": "tools.transforms",
    "transform_point": "tools.transforms",
    "Collate": "tools.collate",
    "sample_dir": "tools.cli",
    "portable": "cache.pair_bands",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bentxt' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"bentxt.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
