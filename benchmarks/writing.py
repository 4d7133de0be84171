"""Writing Array3D columns: the builder's write path vs Python lists vs raw pyarrow IPC.

All three write the same examples of config ``s1s2-all`` (annotation layout:
four band groups ``s2_10m`` uint16 (4,120,120), ``s2_20m`` uint16 (6,60,60),
``s2_60m`` uint16 (2,20,20), ``s1`` float32 (2,120,120) plus the text
columns, ~277 kB a row) to a local file:

- ours: what ``GeneratorBasedBuilder._prepare_split_single`` does with the
  builder's examples: ``features.encode_example(example)`` then
  ``ArrowWriter.write`` with the builder's ``DEFAULT_WRITER_BATCH_SIZE``;
- lists: the same ``ArrowWriter`` fed nested Python lists (``ndarray.tolist()``,
  converted before timing), the usual way ArrayXD data reaches ``datasets``;
- raw IPC: ``pyarrow.ipc`` record batches of fixed-size lists built straight from
  the numpy buffers (no per-row Python): the upper bound for these bytes.
"""

from __future__ import annotations

import os
import time
from typing import Dict, List

import numpy as np
import pyarrow as pa


def examples(pool: int = 32, seed: int = 0) -> List[dict]:
    """``pool`` distinct examples shaped like the builder's ``s1s2-all`` ones (cycled by the writers)."""
    import datasets

    import bigearthnet_txt as bt

    config = bt.BigEarthNetTxt.builder_configs["s1s2-all"]
    features = bt.features_for(config)
    rng = np.random.default_rng(seed)
    out = []
    for k in range(pool):
        ex: Dict[str, object] = {
            "ID": 1000 + k, "s1_name": f"S1A_IW_GRDH_1SDV_20170613T165043_33UUP_{k}_39",
            "patch_id": f"S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_{k:02d}_39",
            "input": "Which of these classes is visible in the image? a) Agro-forestry areas, b) Arable land, c) Inland waters, d) Coniferous forest",
            "output": "b", "type": "mcq", "category": "presence", "split": "train",
            "latitude": 48.3 + k / 1000, "longitude": 13.3, "country": "Austria", "season": "Summer",
            "climate_zone": "Temperate, no dry season, warm summer",
            "bbox": None, "point": None, "options": ["Agro-forestry areas", "Arable land", "Inland waters", "Coniferous forest"],
        }
        for name, feature in features.items():
            if isinstance(feature, datasets.Array3D):
                if np.dtype(feature.dtype).kind == "f":
                    ex[name] = rng.normal(-12, 5, feature.shape).astype(feature.dtype)
                else:
                    ex[name] = rng.integers(0, 10_000, feature.shape).astype(feature.dtype)
        assert set(ex) == set(features), set(features) ^ set(ex)
        out.append(ex)
    return out


def _array_bytes(ex: dict) -> int:
    return sum(v.nbytes for v in ex.values() if isinstance(v, np.ndarray))


def ours(path: str, n: int, pool: List[dict]) -> float:
    from datasets.arrow_writer import ArrowWriter

    import bigearthnet_txt as bt

    features = bt.features_for(bt.BigEarthNetTxt.builder_configs["s1s2-all"])
    t = time.perf_counter()
    writer = ArrowWriter(features=features, path=path, writer_batch_size=bt.BigEarthNetTxt.DEFAULT_WRITER_BATCH_SIZE)
    for i in range(n):
        writer.write(features.encode_example(pool[i % len(pool)]))
    writer.finalize()
    writer.close()
    return time.perf_counter() - t


def lists(path: str, n: int, pool: List[dict]) -> float:
    from datasets.arrow_writer import ArrowWriter

    import bigearthnet_txt as bt

    features = bt.features_for(bt.BigEarthNetTxt.builder_configs["s1s2-all"])
    as_lists = [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in ex.items()} for ex in pool]
    t = time.perf_counter()
    writer = ArrowWriter(features=features, path=path, writer_batch_size=bt.BigEarthNetTxt.DEFAULT_WRITER_BATCH_SIZE)
    for i in range(n):
        writer.write(features.encode_example(as_lists[i % len(as_lists)]))
    writer.finalize()
    writer.close()
    return time.perf_counter() - t


def raw_ipc(path: str, n: int, pool: List[dict], batch: int = 64) -> float:
    names = list(pool[0])
    t = time.perf_counter()
    with pa.OSFile(path, "wb") as sink:
        writer = None
        for start in range(0, n, batch):
            rows = [pool[i % len(pool)] for i in range(start, min(n, start + batch))]
            columns = {}
            for name in names:
                first = rows[0][name]
                if isinstance(first, np.ndarray):
                    flat = pa.array(np.stack([r[name] for r in rows]).reshape(-1))
                    columns[name] = pa.FixedSizeListArray.from_arrays(flat, first.size)
                else:
                    columns[name] = pa.array([r[name] for r in rows])
            record = pa.record_batch(columns)
            if writer is None:
                writer = pa.ipc.new_file(sink, record.schema)
            writer.write_batch(record)
        writer.close()
    return time.perf_counter() - t


def measure(work: str, n: int = 2000, n_lists: int = 200) -> dict:
    """Rows/s and MB/s (of array bytes) for the three writers; files are removed afterwards."""
    pool = examples()
    mb_per_row = _array_bytes(pool[0]) / 1e6
    result = {"array_mb_per_row": mb_per_row}
    for name, fn, rows in (("ours", ours, n), ("lists", lists, n_lists), ("raw_ipc", raw_ipc, n)):
        path = os.path.join(work, f"write-{name}.arrow")
        seconds = fn(path, rows, pool)
        result[name] = {"rows": rows, "rows_per_s": rows / seconds, "mb_per_s": rows * mb_per_row / seconds,
                        "file_mb": os.path.getsize(path) / 1e6}
        os.remove(path)
    return result


def profile(work: str, n: int = 1000, top: int = 15) -> dict:
    """cProfile of ``ours`` (the builder's write path), top entries by own time."""
    import cProfile
    import io
    import pstats

    from benchmarks.preparation import _trim

    pool = examples()
    path = os.path.join(work, "write-profile.arrow")
    profiler = cProfile.Profile()
    profiler.enable()
    ours(path, n, pool)
    profiler.disable()
    os.remove(path)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return {"profile": _trim(out.getvalue())}
