"""The publisher's reading path (``ben_txt_datamodule.py``), re-implemented for timing.

What the BigEarthNet.txt card ships (docs/release.md#publishers-loader; vendored copy
shokrydev/master:src/data_modules/ben_txt_datamodule.py, first revision):

- ``BENImageReader``: the LMDB environment is opened lazily on first access
  with ``readonly=True, lock=False, meminit=False, readahead=True,
  map_size=8 GiB, max_spare_txns=16``; per item one read transaction
  (``begin(write=False, buffers=True)``) per record, ``safetensors.numpy.load``
  of the record bytes, the S2 record under ``patch_id`` and the S1 record under
  ``mapping[patch_id]`` (the ``s1_name`` of the parquet); then
  ``stack_and_interpolate``: per band in the requested order, bands that are
  not ``img_size`` square go through
  ``F.interpolate(torch.Tensor(np.float32(x)).unsqueeze(0).unsqueeze(0), (s, s), mode="nearest")``
  and ``squeeze()``, the others through ``torch.Tensor(np.float32(x))``;
  ``torch.stack`` -> float32 (C, s, s).
- ``BENTxTDataset``: pandas ``read_parquet``; ``isin`` filters type -> category
  -> country -> season -> climate_zone, ``reset_index``, then split;
  ``__getitem__`` takes ``text_data.iloc[idx]``, reads the image by
  ``patch_id``, applies the transform, replaces ``<ref>``/``</ref>`` then
  ``<point>``/``</point>`` (default tokens ``["", ""]``) and returns
  ``{"image_input", "text_input", "reference_output"}``.
- ``collate_mixed``: ``torch.stack`` of the images, lists of the strings.

One deliberate deviation: the original copies the record with ``bytes()``
after its transaction has closed, which py-lmdb documents as invalid for
``buffers=True``; here the copy happens inside the transaction (same cost).
This module shares no code with ``bentxt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Union

import lmdb
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.numpy import load as safetensor_load

S1_BANDS = ["VV", "VH"]
S2_BANDS = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
BAND_COMBINATIONS = {
    "RGB": ["B04", "B03", "B02"],
    "S2-10m20m": ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
    "S1S2-10m20m": ["VV", "VH", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"],
    "all": S1_BANDS + S2_BANDS,
}
EXPECTED_COLUMNS = {
    "ID", "s1_name", "patch_id", "input", "output", "type", "category", "split",
    "latitude", "longitude", "country", "season", "climate_zone",
}


def resolve_bands(bands: Union[str, Iterable[str], None]) -> List[str]:
    if bands is None:
        return list(BAND_COMBINATIONS["all"])
    if isinstance(bands, str):
        assert bands in BAND_COMBINATIONS, f"{bands} not in predefined options: {BAND_COMBINATIONS.keys()}"
        return list(BAND_COMBINATIONS[bands])
    return list(bands)


class BENImageReader:
    def __init__(self, image_lmdb_file, metadata_file, bands: Sequence[str], img_size: int = 120, upsample_mode: str = "nearest"):
        self.img_size = img_size
        self.upsample_mode = upsample_mode
        self.image_lmdb_file = str(image_lmdb_file)
        self.bands = list(bands)
        self.env = None
        self.uses_s1 = any(b in S1_BANDS for b in self.bands)
        self.uses_s2 = any(b in S2_BANDS for b in self.bands)
        self.mapping = None
        if self.uses_s1:
            metadata = pd.read_parquet(metadata_file, columns=["patch_id", "s1_name"])
            self.mapping = dict(zip(metadata["patch_id"], metadata["s1_name"]))

    def stack_and_interpolate(self, data: Dict[str, np.ndarray]) -> torch.Tensor:
        def _interpolate(img_data):
            if not img_data.shape[-2:] == (self.img_size, self.img_size):
                return F.interpolate(
                    torch.Tensor(np.float32(img_data)).unsqueeze(0).unsqueeze(0),
                    (self.img_size, self.img_size),
                    mode=self.upsample_mode,
                    align_corners=True if self.upsample_mode in ["bilinear", "bicubic"] else None,
                ).squeeze()
            return torch.Tensor(np.float32(img_data))

        return torch.stack([_interpolate(data[x]) for x in self.bands])

    def open_env(self) -> None:
        if self.env is None:
            self.env = lmdb.open(
                self.image_lmdb_file,
                readonly=True,
                lock=False,
                meminit=False,
                readahead=True,
                map_size=8 * 1024**3,
                max_spare_txns=16,
            )

    def _record(self, key: str) -> Dict[str, np.ndarray]:
        with self.env.begin(write=False, buffers=True) as txn:
            byte_data = bytes(txn.get(key.encode()))  # copied inside the transaction (see module docstring)
        return safetensor_load(byte_data)

    def __getitem__(self, key: str) -> torch.Tensor:
        self.open_env()
        img_data_dict: dict = {}
        if self.uses_s2:
            img_data_dict.update(self._record(key))
        if self.uses_s1:
            assert self.mapping is not None, "S1 bands are used, but no mapping is provided"
            img_data_dict.update(self._record(self.mapping[key]))
        img_data_dict = {k: v for k, v in img_data_dict.items() if k in self.bands}
        return self.stack_and_interpolate(img_data_dict)


class BENTxTDataset(torch.utils.data.Dataset):
    def __init__(
        self,
        lmdb_file,
        metadata_file,
        bands=None,
        img_size: int = 120,
        upsample_mode: str = "nearest",
        types=None,
        categories=None,
        countries=None,
        seasons=None,
        climate_zones=None,
        transform: Optional[Callable] = None,
        splits=None,
        point_token=None,
        ref_token=None,
    ):
        super().__init__()
        self.bands = resolve_bands(bands)
        self.image_reader = BENImageReader(lmdb_file, metadata_file, self.bands, img_size, upsample_mode)
        self.text_data = pd.read_parquet(metadata_file)
        assert EXPECTED_COLUMNS <= set(self.text_data.columns)
        for column, values in (("type", types), ("category", categories), ("country", countries),
                               ("season", seasons), ("climate_zone", climate_zones)):
            if values is not None:
                self.text_data = self.text_data[self.text_data[column].isin(values)]
        self.text_data = self.text_data.reset_index(drop=True)
        if splits is not None:
            self.text_data = self.text_data[self.text_data["split"].isin(splits)].reset_index(drop=True)
        self.transform = transform
        self.point_token = ["", ""] if point_token is None else point_token
        assert len(self.point_token) == 2, "Point tokens must have length 2."
        self.ref_token = ["", ""] if ref_token is None else ref_token
        assert len(self.ref_token) == 2, "Reference tokens must have length 2."

    def __len__(self) -> int:
        return len(self.text_data)

    def __getitem__(self, idx):
        sample = self.text_data.iloc[idx]
        img_data = self.image_reader[sample.patch_id]
        if self.transform is not None:
            img_data = self.transform(img_data)
        text_in = sample.input.replace("<ref>", self.ref_token[0]).replace("</ref>", self.ref_token[1])
        text_in = text_in.replace("<point>", self.point_token[0]).replace("</point>", self.point_token[1])
        if sample.type in {"binary", "mcq", "captioning", "bounding box"}:
            output = sample.output
        else:
            raise NotImplementedError(f"{sample.type} is not supported")
        return {"image_input": img_data, "text_input": text_in, "reference_output": output}


def collate_mixed(batch):
    return {
        "image_input": torch.stack([item["image_input"] for item in batch]),
        "text_input": [item["text_input"] for item in batch],
        "reference_output": [item["reference_output"] for item in batch],
    }


def data_loader(dataset: BENTxTDataset, batch_size: int = 64, shuffle: bool = False) -> torch.utils.data.DataLoader:
    """The DataModule's loader with ``num_workers_dataloader=0`` (no pinning on CPU)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=0, collate_fn=collate_mixed, pin_memory=False
    )


# ----------------------------------------------------------------------------- LMDB writer (rico-hdl style)


def write_lmdb_from_archives(s2_archive: str, s1_archive: str, target: str, s2_names: Iterable[str],
                             s1_names: Iterable[str]) -> Path:
    """Encode the named patches of the ``.tar.zst`` archives as rico-hdl does.

    rico-hdl reads each GeoTIFF with ``rasterio`` (``read(1)``: native size and
    dtype), stores ``safetensors.numpy.save({band: array})`` under the patch
    name and commits 512 puts per write transaction.
    """
    import io
    import tarfile

    import rasterio
    import zstandard
    from safetensors.numpy import save

    wanted = {"s2": set(s2_names), "s1": set(s1_names)}
    records: Dict[str, Dict[str, np.ndarray]] = {}
    for sensor, archive in (("s2", s2_archive), ("s1", s1_archive)):
        with open(archive, "rb") as raw:
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=1 << 20)
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for info in tar:
                    if not info.isreg() or not info.name.endswith(".tif"):
                        continue
                    patch = info.name.rsplit("/", 2)[-2]
                    if patch not in wanted[sensor]:
                        continue
                    band = info.name.rsplit("_", 1)[-1][: -len(".tif")]
                    with rasterio.MemoryFile(io.BytesIO(tar.extractfile(info).read())) as mem, mem.open() as ds:
                        records.setdefault(patch, {})[band] = ds.read(1)
    missing = (wanted["s2"] | wanted["s1"]) - set(records)
    if missing:
        raise ValueError(f"{len(missing)} patches not found in the archives, e.g. {sorted(missing)[:3]}")
    out = Path(target)
    out.mkdir(parents=True, exist_ok=True)
    encoded = {k: save(v) for k, v in records.items()}
    env = lmdb.open(str(out), map_size=2 * sum(len(v) + 8192 for v in encoded.values()) + (1 << 24), subdir=True)
    try:
        keys = sorted(encoded)
        for start in range(0, len(keys), 512):
            with env.begin(write=True) as txn:
                for key in keys[start : start + 512]:
                    assert txn.put(key.encode("utf-8"), encoded[key], overwrite=False), key
    finally:
        env.close()
    return out
