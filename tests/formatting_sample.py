"""A sample of ``datasets``' own numpy/torch formatting, printed as JSON: run once without and once with the package.

``python tests/formatting_sample.py without`` formats with ``datasets``' own formatters;
``python tests/formatting_sample.py with`` imports ``bigearthnet_txt`` first (which replaces the numpy and torch
formatters for the whole process). ``tests/test_formatting_unchanged.py`` runs both in fresh processes and compares
every value, dtype, shape and type: for datasets that are not ours the output must be identical.
"""

import io
import json
import sys

import datasets
import numpy as np
from PIL import Image


def describe(x):
    """A value as comparable JSON: its type, dtype, shape and values (recursively)."""
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return ["tensor", str(x.dtype), list(x.shape), x.tolist()]
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, np.ndarray):
        values = [describe(v) for v in x.ravel()] if x.dtype == object else x.tolist()
        return ["ndarray", str(x.dtype), list(x.shape), values]
    if isinstance(x, np.generic):
        return ["numpy scalar", type(x).__name__, x.item()]
    if isinstance(x, dict):
        return ["dict", list(x), {k: describe(v) for k, v in x.items()}]
    if isinstance(x, (list, tuple)):
        return [type(x).__name__, [describe(v) for v in x]]
    if isinstance(x, Image.Image):
        return ["PIL", x.mode, list(x.size), list(x.getdata())]
    if isinstance(x, float) and x != x:
        return ["float", "nan"]
    return [type(x).__name__, x if isinstance(x, (int, float, str, bool)) or x is None else repr(x)]


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((2, 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def datasets_under_test():
    """Plain datasets with the column kinds a user might have, some named like ours (but not ours)."""
    plain = datasets.Dataset.from_dict(
        {
            "i": [1, 2, 3],
            "f": [0.5, 1.5, 2.5],
            "s": ["a", "bc", ""],
            "b": [True, False, True],
            "maybe": [1, None, 3],
            "maybe_s": ["x", None, "z"],
            "nested": [[1, 2], [3], []],
            "nested2": [[[1.0, 2.0]], [[3.0]], [[]]],
            "strings": [["a", "b"], ["c"], []],
            "d": [{"x": 1, "y": "p"}, {"x": 2, "y": "q"}, {"x": 3, "y": None}],
            "a2": [np.arange(6, dtype=np.uint16).reshape(2, 3) + k for k in range(3)],
            "a3": [np.full((2, 2, 2), k, dtype=np.float32) for k in range(3)],
            "a3i": [np.full((1, 2, 2), k, dtype=np.int8) for k in range(3)],
            "fixed": [[1, 2], [3, 4], [5, 6]],
            "label": [0, 1, 0],
        },
        features=datasets.Features(
            {
                "i": datasets.Value("int32"),
                "f": datasets.Value("float64"),
                "s": datasets.Value("string"),
                "b": datasets.Value("bool"),
                "maybe": datasets.Value("int64"),
                "maybe_s": datasets.Value("string"),
                "nested": datasets.List(datasets.Value("int16")),
                "nested2": datasets.List(datasets.List(datasets.Value("float32"))),
                "strings": datasets.List(datasets.Value("string")),
                "d": {"x": datasets.Value("uint8"), "y": datasets.Value("string")},
                "a2": datasets.Array2D((2, 3), "uint16"),
                "a3": datasets.Array3D((2, 2, 2), "float32"),
                "a3i": datasets.Array3D((1, 2, 2), "int8"),
                "fixed": datasets.List(datasets.Value("int64"), length=2),
                "label": datasets.ClassLabel(names=["no", "yes"]),
            }
        ),
    )
    # named like our rows: band-group and "image" Array3D columns, a patch_id, but no s1_name: not ours
    lookalike = datasets.Dataset.from_dict(
        {
            "patch_id": ["p0", "p1"],
            "s2_10m": [np.full((2, 2, 2), 7 + k, dtype=np.uint16) for k in range(2)],
            "s1": [np.full((2, 2, 2), -1.5 - k, dtype=np.float64) for k in range(2)],
            "image": [np.full((1, 2, 2), k, dtype=np.float32) for k in range(2)],
            "options": [["a", "b"], ["c", "d"]],
        },
        features=datasets.Features(
            {
                "patch_id": datasets.Value("string"),
                "s2_10m": datasets.Array3D((2, 2, 2), "uint16"),
                "s1": datasets.Array3D((2, 2, 2), "float64"),
                "image": datasets.Array3D((1, 2, 2), "float32"),
                "options": datasets.List(datasets.Value("string"), length=2),
            }
        ),
    )
    pictures = datasets.Dataset.from_dict(
        {"picture": [{"bytes": png(10), "path": None}, {"bytes": png(20), "path": None}], "n": [1, 2]},
        features=datasets.Features({"picture": datasets.Image(), "n": datasets.Value("int64")}),
    )
    return {"plain": plain, "lookalike": lookalike, "pictures": pictures}


def formats():
    out = [("numpy", {}), ("numpy", {"dtype": None}), ("numpy", {"dtype": np.float32})]
    try:
        import torch

        out += [("torch", {}), ("torch", {"dtype": torch.float64})]
    except ImportError:  # pragma: no cover
        pass
    return out


def run() -> dict:
    results = {}
    for name, ds in datasets_under_test().items():
        for fmt, kwargs in formats():
            key = f"{name}/{fmt}/{sorted((k, str(v)) for k, v in kwargs.items())}"
            for columns in (None, ds.column_names[:2], ds.column_names[-1:]):
                view = ds.with_format(fmt, columns=columns, **kwargs)
                tag = f"{key}/columns={columns}"
                results[f"{tag}/row"] = describe(view[0])
                results[f"{tag}/last row"] = describe(view[-1])
                results[f"{tag}/slice"] = describe(view[0:2])
                results[f"{tag}/rows"] = describe(view[[0, len(ds) - 1]])
                results[f"{tag}/column"] = describe(view[(columns or ds.column_names)[0]][:])
                results[f"{tag}/iter"] = describe(list(view.iter(batch_size=2)))
                results[f"{tag}/each"] = describe([example for example in view])
            keep = ds.with_format(fmt, columns=ds.column_names[:1], output_all_columns=True, **kwargs)
            results[f"{key}/output_all_columns"] = describe(keep[0:2])
            if not kwargs:  # IterableDataset.with_format takes no format arguments
                streamed = ds.to_iterable_dataset().with_format(fmt)
                results[f"{key}/iterable"] = describe(list(streamed))
                results[f"{key}/iterable batches"] = describe(list(streamed.iter(batch_size=2)))
    return results


if __name__ == "__main__":
    if sys.argv[1:] == ["with"]:
        import bigearthnet_txt  # noqa: F401  (replaces the numpy and torch formatters for the whole process)
        from datasets.formatting import get_formatter

        assert type(get_formatter("numpy")).__module__ == "bentxt.cache.formatting", "the package's formatter is not in use"
    elif sys.argv[1:] != ["without"]:
        sys.exit("usage: formatting_sample.py with|without")
    datasets.disable_progress_bars()
    json.dump(run(), sys.stdout, sort_keys=True)
