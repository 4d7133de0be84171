"""Where a band of a patch lives, in the archives and in extracted folders.

The release puts every band in its own GeoTIFF under a tile (S2) or scene (S1)
directory (docs/release.md#patch-names, docs/release.md#tar-layout). S1 and S2 names differ in date, time
and zero padding, so a patch's S1 partner is only ever found through the
``s1_name`` column, never by rewriting the S2 name; the directory rules below
only derive a name's *own* parent folder.
"""

from __future__ import annotations

import re
from typing import Optional, Tuple

#: top-level folder of each sensor's archive / extracted tree
ROOT_DIR = {"s1": "BigEarthNet-S1", "s2": "BigEarthNet-S2"}
_SENSOR_OF_ROOT = {folder: sensor for sensor, folder in ROOT_DIR.items()}
#: the annotation column naming each sensor's patch (the join key of its imagery)
NAME_COLUMN = {"s1": "s1_name", "s2": "patch_id"}
#: top-level folder of the reference-map archive
MAPS_DIR = "Reference_Maps"

#: patch names (rico-hdl's discovery regexes) with the tile and grid cell as groups; a name must match whole:
#: Python's ``re`` with :func:`re.fullmatch`, Arrow's RE2 between ``^`` and ``$`` (``annotations.check_pair_names``)
PATCH_NAME_PATTERN = {
    "s1": r"S1[AB]_IW_GRDH_1SDV_\d{8}T\d{6}_(?P<tile>[0-9A-Z]{5})_(?P<x>\d+)_(?P<y>\d+)",
    "s2": r"S2[AB]_MSIL2A_\d{8}T\d{6}_N9999_R\d{3}_T(?P<tile>[0-9A-Z]{5})_(?P<x>\d{2})_(?P<y>\d{2})",
}
#: the same, anchored at both ends (``\Z``: ``$`` would accept a trailing newline)
PATCH_NAME_RE = {sensor: re.compile(rf"^{pattern}\Z") for sensor, pattern in PATCH_NAME_PATTERN.items()}


#: local copies (the datasets download cache names them by a hash) -> the URL they came from
_ORIGINS: dict = {}


def remember_origin(local: str, url: str) -> None:
    """Messages about a downloaded file name its URL, not its cache hash."""
    if local != url:
        _ORIGINS[local] = url


def display_name(urlpath: str) -> str:
    """How a file is named in messages: its URL if it was downloaded, else the last hop of a chained fsspec URL."""
    urlpath = _ORIGINS.get(urlpath, urlpath)
    return urlpath.split("::")[-1]


def parent_dir(sensor: str, patch_name: str) -> str:
    """Tile directory of an S2 patch, scene directory of an S1 patch."""
    drop = 2 if sensor == "s2" else 3
    return "_".join(patch_name.split("_")[:-drop])


def band_path(sensor: str, patch_name: str, band: str) -> str:
    """Relative path of one band file, as stored in the archive and in extracted folders."""
    return f"{ROOT_DIR[sensor]}/{parent_dir(sensor, patch_name)}/{patch_name}/{patch_name}_{band}.tif"


def reference_map_path(patch_id: str) -> str:
    """A patch's reference map sits in the S2 tile directory layout under ``Reference_Maps/``."""
    return f"{MAPS_DIR}/{parent_dir('s2', patch_id)}/{patch_id}/{patch_id}_reference_map.tif"


def parse_member(path: str) -> Optional[Tuple[str, str, str]]:
    """``BigEarthNet-S2/<tile>/<patch>/<patch>_B02.tif`` -> ("s2", patch, "B02").

    Returns None for anything that is not a band file of a known sensor
    (directory members, reference maps, stray files), so callers decide
    whether to ignore it.
    """
    path = path[2:] if path.startswith("./") else path
    parts = path.split("/")
    if len(parts) != 4 or not parts[3].endswith(".tif"):
        return None
    sensor = _SENSOR_OF_ROOT.get(parts[0])
    patch = parts[2]
    if sensor is None or not parts[3].startswith(patch + "_"):
        return None
    band = parts[3][len(patch) + 1 : -4]
    return sensor, patch, band


def check_patch_name(sensor: str, name: str, where: str = "") -> str:
    """A patch name must match the release grammar before any path is built from it (no ``../``, no slashes).

    ``where`` (e.g. the folder asked) starts the message.
    """
    if not isinstance(name, str) or not PATCH_NAME_RE[sensor].fullmatch(name):
        raise ValueError(f"{where + ': ' if where else ''}{name!r} is not a BigEarthNet v2.0 {sensor.upper()} patch "
                         f"name (e.g. {EXAMPLE_NAME[sensor]})")
    return name


EXAMPLE_NAME = {
    "s1": "S1B_IW_GRDH_1SDV_20170612T165809_33UUP_26_57",
    "s2": "S2A_MSIL2A_20170613T101031_N9999_R022_T33UUP_26_57",
}
