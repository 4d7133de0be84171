"""Readers and tools around the ``bigearthnet_txt`` builder (one job per module; see the README's "How it works")."""

#: public helpers, imported on first use so that ``import bentxt`` stays light. ``plot`` and ``collate`` are
#: not here: they share their submodule's name (``bentxt.plot.plot``, ``bentxt.collate.collate``).
_LAZY = {
    "normalize": "transforms",
    "Normalize": "transforms",
    "band_stats": "transforms",
    "GROUP_MEAN": "transforms",
    "GROUP_STD": "transforms",
    "BAND_MEAN": "transforms",
    "BAND_STD": "transforms",
    "GeometricAugment": "transforms",
    "OrientationTextError": "transforms",
    "apply_op": "transforms",
    "orientation_text": "transforms",
    "transform_image": "transforms",
    "transform_bbox": "transforms",
    "transform_point": "transforms",
    "Collate": "collate",
    "sample_dir": "cli",
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
