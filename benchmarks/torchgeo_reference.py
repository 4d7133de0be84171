"""torchgeo's ``BigEarthNetV2.__getitem__`` reading path, re-implemented line by line, for the per-pair comparison.

From microsoft/torchgeo ``torchgeo/datasets/bigearthnet.py`` (``BigEarthNetV2``,
bands="all"): per pair, ``glob`` the S1 and S2 patch folders for ``*.tif``,
sort (S2 by band with B8A after B08), read every band with rasterio at
``out_shape=(120, 120)``, ``out_dtype="int32"``, bilinear resampling, stack to
float tensors; read the reference map (int32) and remap its CLC codes to 0-18
with one boolean mask per code; a 19-dim multi-hot label from the metadata's
``labels``. torchgeo itself is not installed here (it pulls lightning, kornia,
timm, ...); this copy is what its ``__getitem__`` does, on the same extracted
folders and ``metadata.parquet`` it expects.
"""

from __future__ import annotations

import glob
import os
import tarfile
import time
from pathlib import Path

import numpy as np

CLASS_SET = [
    "Urban fabric", "Industrial or commercial units", "Arable land", "Permanent crops", "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation", "Agro-forestry areas",
    "Broad-leaved forest", "Coniferous forest", "Mixed forest", "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation", "Transitional woodland, shrub", "Beaches, dunes, sands",
    "Inland wetlands", "Coastal wetlands", "Inland waters", "Marine waters",
]
CLC_CODES = {111: 0, 112: 0, 121: 1, 211: 2, 221: 3, 231: 4, 242: 5, 243: 6, 244: 7, 311: 8, 312: 9, 313: 10, 321: 11,
             322: 12, 324: 13, 331: 14, 411: 15, 421: 16, 511: 17, 523: 18}
DIRS = {"s1": "BigEarthNet-S1", "s2": "BigEarthNet-S2", "maps": "Reference_Maps"}


def sort_sentinel2_bands(x: str) -> str:
    x = os.path.splitext(os.path.basename(x).split("_")[-1])[0]
    return "B08A" if x == "B8A" else x


class BigEarthNetV2Reading:
    """The reading half of torchgeo's ``BigEarthNetV2`` (bands="all"); no download, no transforms."""

    def __init__(self, root: str):
        import pandas as pd

        self.root = root
        self.metadata_df = pd.read_parquet(os.path.join(root, "metadata.parquet"))
        self.class2idx = {c: i for i, c in enumerate(CLASS_SET)}

    def __len__(self) -> int:
        return len(self.metadata_df)

    def __getitem__(self, index: int) -> dict:
        return {
            "image_s1": self._load_image(index, "s1"),
            "image_s2": self._load_image(index, "s2"),
            "mask": self._load_map(index),
            "label": self._load_target(index),
        }

    def _load_image(self, index: int, sensor: str):
        import rasterio
        import torch
        from rasterio.enums import Resampling

        row = self.metadata_df.loc[index]
        patch_id = row["s1_name" if sensor == "s1" else "patch_id"]
        patch_dir = "_".join(patch_id.split("_")[0:-2] if sensor == "s2" else patch_id.split("_")[0:-3])
        paths = glob.glob(os.path.join(self.root, DIRS[sensor], patch_dir, patch_id, "*.tif"))
        paths = sorted(paths, key=sort_sentinel2_bands) if sensor == "s2" else sorted(paths)
        images = []
        for path in paths:
            with rasterio.open(path) as dataset:
                images.append(dataset.read(indexes=1, out_shape=(120, 120), out_dtype="int32", resampling=Resampling.bilinear))
        return torch.from_numpy(np.stack(images, axis=0)).float()

    def _load_map(self, index: int):
        import rasterio
        import torch

        patch_id = self.metadata_df.loc[index]["patch_id"]
        patch_dir = "_".join(patch_id.split("_")[0:-2])
        path = os.path.join(self.root, DIRS["maps"], patch_dir, patch_id, patch_id + "_reference_map.tif")
        with rasterio.open(path) as dataset:
            tensor = torch.from_numpy(dataset.read(out_dtype="int32"))
        for corine, ordinal in CLC_CODES.items():
            tensor[tensor == corine] = ordinal
        return tensor.long()

    def _load_target(self, index: int):
        import torch

        indices = [self.class2idx[name] for name in self.metadata_df.iloc[index]["labels"]]
        target = torch.zeros(len(CLASS_SET), dtype=torch.long)
        target[indices] = 1
        return target


def extract(data_dir: str, root: str) -> int:
    """Extract the archives' members of the data dir's pairs into torchgeo's layout, write its ``metadata.parquet``."""
    import pandas as pd
    import pyarrow.parquet as pq
    import zstandard

    table = pq.read_table(os.path.join(data_dir, "BigEarthNet.txt.parquet"), columns=["patch_id", "s1_name", "split"])
    pairs = table.to_pandas().drop_duplicates("patch_id").reset_index(drop=True)
    wanted = set(pairs["patch_id"]) | set(pairs["s1_name"])
    codes = {}
    for name in ("BigEarthNet-S2.tar.zst", "BigEarthNet-S1.tar.zst", "Reference_Maps.tar.zst"):
        with open(os.path.join(data_dir, name), "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as stream:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    parts = member.name.split("/")
                    if member.isfile() and len(parts) == 4 and parts[2] in wanted:
                        data = tar.extractfile(member).read()
                        target = Path(root, member.name)
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(data)
                        if parts[0] == "Reference_Maps":
                            from rasterio.io import MemoryFile

                            with MemoryFile(data) as f, f.open() as ds:
                                codes[parts[2]] = sorted({CLC_CODES.get(int(c), 0) for c in np.unique(ds.read(1))})
    pairs["labels"] = [[CLASS_SET[i] for i in codes.get(p, [0])] for p in pairs["patch_id"]]
    pd.DataFrame(pairs).to_parquet(os.path.join(root, "metadata.parquet"))
    return len(pairs)


def compare(work: str, data_dir: str, repeat: int = 2) -> dict:
    """Pairs per second: ours (patch-layout cache, ds[i] of the four band groups) vs torchgeo's __getitem__."""
    import datasets

    import bigearthnet_txt  # noqa: F401

    root = os.path.join(work, "torchgeo-folders")
    if not os.path.exists(os.path.join(root, "metadata.parquet")):
        extract(data_dir, root)
    theirs = BigEarthNetV2Reading(root)
    datasets.disable_progress_bars()
    builder = datasets.load_dataset_builder("bigearthnet_txt", "s1s2-all", data_dir=data_dir, layout="patch",
                                            cache_dir=os.path.join(work, "torchgeo-cache"))
    builder.download_and_prepare()
    parts = builder.as_dataset()
    ours = datasets.concatenate_datasets(list(parts.values())).with_format(
        "numpy", columns=["s2_10m", "s2_20m", "s2_60m", "s1"])
    n = min(len(ours), len(theirs))

    def run(dataset):
        t = time.perf_counter()
        for i in range(n):
            dataset[i]
        return time.perf_counter() - t

    run(ours), run(theirs)  # warm-up: page cache
    return {"pairs": n, "ours": n / min(run(ours) for _ in range(repeat)),
            "torchgeo": n / min(run(theirs) for _ in range(repeat))}
