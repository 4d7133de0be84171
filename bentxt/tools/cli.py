"""``bigearthnet-txt`` / ``python -m bigearthnet_txt``: demo, info, show, prepare, export.

Every subcommand that reads data takes every option of a config (generated from
``bentxt.config.CONFIG_OPTIONS``, so none can be missing) plus ``--data-dir``,
``--data-files``, ``--cache-dir`` and ``--num-proc``. The builder comes from
``registration.builder_for``: the one ``load_dataset("bigearthnet_txt", ...)``
uses, so the CLI and the Python API share one cache (the ``datasets`` cache,
``HF_DATASETS_CACHE``, unless ``--cache-dir`` is given).

Long steps show progress bars with rate and ETA (datasets' own bars for
preparation, the archive reader's byte bars, ``tqdm`` here for reading the
parquet and scanning a stream). ``--quiet`` hides them and the info logs,
``--debug`` shows tracebacks; both work before or after the subcommand. An
error prints one line ``bigearthnet-txt: error: <message>`` and exits with 2
(the command line is wrong) or 1 (the data or the run failed).
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import logging
import os
import re
import sys
import traceback
import typing
from importlib import resources
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union, cast

import numpy as np

from bentxt.text import annotations as ann
from bentxt.cache import folders as cache
from bentxt import config as cfg
from bentxt.errors import BigEarthNetTxtError
from bentxt.imagery.raster import RESAMPLE_MODES

PROG = "bigearthnet-txt"
logger = logging.getLogger("bigearthnet_txt")


def sample_dir() -> str:
    """The embedded synthetic sample (real file formats, a few patches): bentxt/sample/."""
    return str(resources.files("bentxt").joinpath("sample"))


# ----------------------------------------------------------------------------- errors


class UsageError(BigEarthNetTxtError):
    """The command line is wrong (exit status 2)."""


class DataError(BigEarthNetTxtError):
    """What the command line asked for is not in the data (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors reach :func:`main` (one line, exit 2) instead of printing the usage and exiting."""

    def error(self, message):
        raise UsageError(message)


def _one_line(err: BaseException) -> str:
    message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    if type(err) in (UsageError, DataError, ValueError, ann.FilterValueError):
        return message or type(err).__name__
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def _fail(err: BaseException, status: int, debug: bool) -> int:
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    print(f"{PROG}: error: {_one_line(err)}", file=sys.stderr)
    return status


# ----------------------------------------------------------------------------- config options as flags

#: the options a config name is made of (``<sensor>-<task>[-<split>]``): as flags they pick the named config
NAME_PARTS = ("sensor", "task", "split")
#: valid values, where the config module declares them (checked by argparse; every value is validated again by the config)
CHOICES: Dict[str, Tuple[str, ...]] = {
    "sensor": tuple(cfg.SENSORS), "task": tuple(cfg.TASKS), "split": tuple(cfg.SPLITS),
    "layout": tuple(cfg.LAYOUTS), "resample": tuple(RESAMPLE_MODES),
}
#: better help than the generic one; an option without an entry still gets its flag
HELP: Dict[str, str] = {
    "sensor": "replace the CONFIG's sensor part (s2-vqa --sensor s1 = s1-vqa)",
    "task": "replace the CONFIG's task part (s2-vqa --task captioning = s2-captioning)",
    "split": "only this split (s2-vqa --split bench = s2-vqa-bench); show: the split drawn (default test)",
    "categories": "keep rows of these categories (repeat or list several)",
    "countries": "keep rows of these countries",
    "seasons": "keep rows of these seasons",
    "climate_zones": "keep rows of these climate zones (quote each: they contain commas)",
    "point_token": "two strings replacing <point> and </point> ('' '' strips the tags)",
    "ref_token": "two strings replacing <ref> and </ref>",
    "bands": "one float32 'image' in this band order: a preset (RGB, S2-10m20m, S1S2-10m20m, all) or a comma list (B04,B03,B02)",
    "img_size": "pixels per side of 'image' with --bands",
    "resample": "resampling of 'image' with --bands",
    "layout": "annotation: one example per text; patch: one per image pair, its texts in a list",
    "skip_missing": "skip (and count) image pairs in the texts but not in the imagery",
    "skip_invalid": "skip (and count) image pairs whose band files do not decode",
    "keep_archives": "keep a copy of archives read from URLs in the download folder (default: read once as they download)",
    "store_all_pairs": "store every pair an archive pass reads in the source's imagery store, not only this config's "
                       "(default: yes from URLs, no from local files)",
    "image_source": "where the imagery is: PATH for both sensors, or s1=PATH,s2=PATH "
                    "(archives, extracted folders, an LMDB, an export)",
}


def _keyed_paths(value: str, keys: Tuple[str, ...], flag: str) -> Dict[str, Union[str, List[str]]]:
    """``k=PATH,k=PATH`` -> ``{k: PATH}`` (a key given twice: a list, e.g. torchgeo's archive parts)."""
    out: Dict[str, Union[str, List[str]]] = {}
    for part in value.split(","):
        key, sep, path = part.partition("=")
        key = key.strip()
        if not sep or key not in keys or not path.strip():
            raise argparse.ArgumentTypeError(
                f"{flag} {value!r}: expected {','.join(f'{k}=PATH' for k in keys)} (each key from {list(keys)})"
            )
        path = path.strip()
        if key in out:
            have = out[key]
            out[key] = (have if isinstance(have, list) else [have]) + [path]
        else:
            out[key] = path
    return out


def parse_bands(value: str) -> object:
    """``RGB`` (a preset or one band) stays a string; ``B04,B03,B02`` becomes a list."""
    if "," in value:
        return [b.strip() for b in value.split(",") if b.strip()]
    return value.strip()


def parse_image_source(value: str) -> object:
    """``PATH`` for both sensors, or ``s1=PATH,s2=PATH`` (``KEY=...``: keyed, so a wrong key is an error, not a path)."""
    if re.match(r"\s*\w+\s*=", value):
        return _keyed_paths(value, ("s1", "s2"), "--image-source")
    return value


def parse_data_files(value: str) -> Dict[str, Union[str, List[str]]]:
    from bentxt.sources import SOURCE_KEYS

    return _keyed_paths(value, SOURCE_KEYS, "--data-files")


#: options whose type (``object``) says nothing about how to read them from a command line
VALUE_PARSERS: Dict[str, Tuple[Callable[[str], object], str]] = {
    "bands": (parse_bands, "PRESET|BAND,BAND,..."),
    "image_source": (parse_image_source, "PATH|s1=PATH,s2=PATH"),
}


def flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def option_flags() -> List[Tuple[str, dict]]:
    """``(flag, add_argument keywords)`` for every config option, from the config dataclass's fields and types.

    Options not given on the command line are not set (``default=SUPPRESS``),
    so a config gets only what the user asked for, like ``load_dataset(**kwargs)``.
    """
    hints = typing.get_type_hints(cfg.BigEarthNetTxtConfig)
    fields = {f.name: f for f in dataclasses.fields(cfg.BigEarthNetTxtConfig)}
    out = []
    for option in cfg.CONFIG_OPTIONS:
        hint, default = hints[option], fields[option].default
        args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is typing.Union else [hint]
        kind = args[0] if len(args) == 1 else hint
        kwargs: dict = {"dest": option, "default": argparse.SUPPRESS}
        if option in VALUE_PARSERS:
            kwargs.update(type=VALUE_PARSERS[option][0], metavar=VALUE_PARSERS[option][1])
        elif kind is bool:
            kwargs.update(action=argparse.BooleanOptionalAction)
        elif kind in (int, float, str):
            kwargs.update(type=kind)
            if option in CHOICES:
                kwargs["choices"] = CHOICES[option]
            else:
                kwargs["metavar"] = option.upper()
        elif typing.get_origin(kind) in (list, tuple, collections.abc.Sequence):
            kwargs.update(nargs="+", action="extend", metavar="VALUE")
        else:
            raise TypeError(f"config option {option!r} ({hint}): no command-line parser; add one to cli.VALUE_PARSERS")
        shown = "" if default is None or isinstance(default, bool) or option in NAME_PARTS else f" (default {default})"
        kwargs["help"] = HELP.get(option, f"config option {option}") + shown
        out.append((flag(option), kwargs))
    return out


def _add_config_options(p: argparse.ArgumentParser, building: bool, data_dir_help: str = "default: the release") -> None:
    group = p.add_argument_group(
        "config options", "as in load_dataset(..., option=value); a list option takes several values, so put CONFIG "
        "before it (--countries=Portugal takes one value)")
    for name, kwargs in option_flags():
        group.add_argument(name, **kwargs)
    files = p.add_argument_group("inputs" + (" and cache" if building else ""))
    files.add_argument("--data-dir", default=None, help=f"folder with BigEarthNet.txt.parquet and the imagery ({data_dir_help})")
    files.add_argument("--data-files", type=parse_data_files, action="append", default=None,
                       metavar="annotations=PATH,s1=PATH,s2=PATH",
                       help="named files, instead of or on top of --data-dir")
    if building:
        files.add_argument("--cache-dir", default=None, help="default: the datasets cache (HF_DATASETS_CACHE)")
        files.add_argument("--num-proc", type=int, default=None, help="processes preparing the cache")


def config_options(args) -> Dict[str, Any]:
    """The config options given on the command line."""
    return {option: getattr(args, option) for option in cfg.CONFIG_OPTIONS if hasattr(args, option)}


def config_request(args, name: str) -> Tuple[str, Dict[str, Any]]:
    """(config name, other options): ``--sensor``/``--task``/``--split`` pick the named config they make."""
    options = config_options(args)
    base = _resolve(name)
    parts = {p: options.pop(p) for p in NAME_PARTS if p in options}
    if not parts:
        return name, options
    if base.split and parts.get("split", base.split) != base.split:
        raise UsageError(f"--split {parts['split']}: config {name} has the splits {list(base.splits)}")
    sensor, task, split = (parts.get(p, getattr(base, p)) for p in NAME_PARTS)
    return f"{sensor}-{task}" + (f"-{split}" if split else ""), options


def _resolve(name: str, **options) -> cfg.BigEarthNetTxtConfig:
    try:
        return cfg.resolve_config(name, **options)
    except ValueError as err:
        raise UsageError(str(err)) from err


def _data_files(args) -> Optional[Dict[str, object]]:
    if not args.data_files:
        return None
    merged: Dict[str, list] = {}
    for part in args.data_files:  # --data-files given several times: one dict (a key twice: its paths in a list)
        for key, paths in part.items():
            merged.setdefault(key, []).extend(paths if isinstance(paths, list) else [paths])
    return {key: paths[0] if len(paths) == 1 else paths for key, paths in merged.items()}


def build(args, name: str, default_data_dir: Optional[str] = None):
    """The builder ``load_dataset("bigearthnet_txt", name, ...)`` would use for these arguments (same cache folder)."""
    from bentxt.registration import builder_for

    name, options = config_request(args, name)
    data_files = _data_files(args)
    data_dir = args.data_dir
    if data_dir is None and data_files is None and "image_source" not in options:
        data_dir = default_data_dir
    _resolve(name, data_dir=data_dir, data_files=data_files, **options)  # a wrong option is a usage error (2)
    return builder_for(name, data_dir=data_dir, data_files=data_files, cache_dir=args.cache_dir, **options)


def disk_usage(path: str) -> int:
    """Bytes a folder takes on disk (``du``: allocated blocks)."""
    total = 0
    for root, _, files in os.walk(path):
        for file in files:
            st = os.lstat(os.path.join(root, file))
            total += st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    return total


# ----------------------------------------------------------------------------- demo


def _describe(example: dict) -> str:
    lines = []
    for key, value in example.items():
        if isinstance(value, np.ndarray):
            value = f"array {value.shape} {value.dtype}, values {value.min():.4g} .. {value.max():.4g}"
        elif isinstance(value, str) and len(value) > 100:
            value = repr(value[:97] + "...")
        else:
            value = repr(value)
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def _source_names(config) -> str:
    from bentxt import sources

    files = sources.resolve(config, config.sensors)
    return ", ".join(files[s].name for s in config.sensors)


def demo(args) -> int:
    """Prepare a config from the embedded sample, then stream it, and show that both agree."""
    builder = build(args, args.config, default_data_dir=sample_dir())
    config = builder.config
    where = "the embedded synthetic sample" if config.data_dir == sample_dir() else "the given data"
    print(f"Preparing {config.name} from {where} into {builder.cache_dir}")
    builder.download_and_prepare(num_proc=args.num_proc)
    ds = builder.as_dataset()
    for split, part in ds.items():
        print(f"  {split}: {part.num_rows} examples")
    split = "test" if "test" in ds else next(iter(ds))
    part = ds[split]
    kinds = part["type"] if "type" in part.column_names else [f"patch {i}" for i in range(part.num_rows)]
    shown: Set[str] = set()
    for i, kind in enumerate(kinds):
        if kind not in shown and len(shown) < args.examples:
            shown.add(kind)
            print(f"{split} example {i} ({kind}):\n{_describe(part[i])}")
    streamed = sum(1 for _ in builder.as_streaming_dataset(split=split))
    print(f"streaming {split}: {streamed} examples read from {_source_names(config)} (prepared: {part.num_rows})")
    return 0 if streamed == part.num_rows else 1


# ----------------------------------------------------------------------------- info


def _bar(iterable=None, **kwargs):
    """A progress bar with rate and ETA; silent under ``--quiet`` (datasets.disable_progress_bars)."""
    from datasets.utils.tqdm import tqdm

    return tqdm(iterable, **kwargs)


#: average UTF-8 bytes of input + output per annotation row in the release, for the cache estimate when the
#: parquet is not read (captions ~750 B, other rows 70-170 B, weighted by the type counts; < 0.2% of the images)
TEXT_BYTES_PER_ROW = 150

#: Rows of the release per text type where they are known, per split and in total ("total": all four splits).
#: docs/release.md#counts (third-party counts of the real parquet): type totals, and
#: bench rows binary 6,927, mcq 5,550, captions 970, referring (type "bounding box") 1,582 (sum 15,029).
#: Captions per split are derived (README "Sizes of the release"): 463,932 captions = 464,044 pairs - the 112 bench pairs
#: without one, so every other pair has exactly one and captions = image pairs per split.
#: Per-type rows of train/validation/test are not published. (Belongs in dataset_infos/sources.json.)
KNOWN_TYPE_ROWS: Dict[str, Dict[str, int]] = {
    "binary": {"bench": 6_927, "total": 3_625_160},
    "mcq": {"bench": 5_550, "total": 3_259_184},
    "bounding box": {"bench": 1_582, "total": 2_205_686},
    "captioning": {"train": 229_114, "validation": 118_095, "test": 115_753, "bench": 970, "total": 463_932},
}
#: types whose rows are one per image pair, so their pairs equal their rows (see KNOWN_TYPE_ROWS)
ONE_ROW_PER_PAIR = ("captioning",)


def known_rows(types, split: str) -> Optional[int]:
    """Rows of these types in a split (or ``"total"``) of the release, if known."""
    from bentxt import sources

    counts = sources.release()["annotations"]["split_rows"]
    if set(types) == set(cfg.TASKS["all"]):
        return sum(counts.values()) if split == "total" else counts[split]
    values = [KNOWN_TYPE_ROWS.get(t, {}).get(split) for t in types]
    return None if None in values else sum(cast(List[int], values))


def release_counts(config) -> dict:
    """Per split of the release (and ``"total"`` over all four): rows and image pairs (None = unknown), and bounds.

    Rows of the ``all`` task are recorded per split (sources.json); per type the
    known counts are :data:`KNOWN_TYPE_ROWS`. Image pairs are exact for ``all``
    (every pair has texts) and for captioning (one caption per pair), else
    bounded by the split's pairs. Row filters make every count a bound.
    """
    from bentxt import sources

    annotations = sources.release()["annotations"]
    types = cfg.TASKS[config.task]
    filtered = any(v is not None for v in config.filters.values())
    out: Dict[str, dict] = {}
    all_types = set(types) == set(cfg.TASKS["all"])
    one_per_pair = set(types) <= set(ONE_ROW_PER_PAIR)
    for split in config.splits + (("total",) if len(config.splits) == len(cfg.SPLITS) else ()):
        pairs = sum(annotations["split_patches"].values()) if split == "total" else annotations["split_patches"][split]
        rows = known_rows(types, split)
        patches = pairs if all_types else rows if one_per_pair else None
        out[split] = {
            "rows": None if filtered else rows,
            "patches": None if filtered else patches,
            "max_rows": rows if rows is not None else known_rows(cfg.TASKS["all"], split),
            "max_patches": patches if patches is not None else pairs,
            "text_bytes": None,
        }
    return out


def parquet_counts(config, urlpath: str) -> dict:
    """Per split: rows, image pairs and text bytes of ``config``'s selection in an annotation parquet."""
    import pyarrow.compute as pc

    from bentxt.text import annotations as ann

    selection = config.selection()
    columns = sorted({"type", "category", "split", "input", "output", config.key_column} | {c for c, _ in selection.filters})
    counts: Dict[str, Dict[str, Any]] = {s: {"rows": 0, "keys": set(), "text_bytes": 0} for s in config.splits}
    f, pf = ann.open_parquet(urlpath)
    with f:
        for i in _bar(range(pf.num_row_groups), desc="Reading the annotation parquet", unit=" row groups"):
            rg = pf.read_row_group(i, columns=columns).filter(selection.expression())
            for split, c in counts.items():
                part = rg.filter(pc.equal(rg["split"], split))
                if not len(part):
                    continue
                c["rows"] += len(part)
                c["keys"].update(pc.unique(part[config.key_column]).to_pylist())
                c["text_bytes"] += sum(int(pc.sum(pc.binary_length(part[k])).as_py() or 0) for k in ("input", "output"))
    return {s: {"rows": c["rows"], "patches": len(c["keys"]), "text_bytes": c["text_bytes"]} for s, c in counts.items()}


def _gb(n: Optional[float]) -> str:
    return "unknown" if n is None else f"{n / 1e9:,.2f} GB" if n >= 1e8 else f"{n / 1e6:,.2f} MB"


def size_table(config, counts: dict) -> List[List[str]]:
    """Rows of the ``info`` table: split, rows, image pairs, cache estimate (``<=`` = upper bound).

    The cache keeps each pair's pixels once whatever the layout, so one estimate
    serves both layouts. A ``"total"`` entry in ``counts`` is used as given (it
    may be exact where the splits are not); else the splits are summed.
    """
    table = [["split", "rows", "image pairs", "cache (estimate)"]]
    summed = {"rows": 0, "patches": 0, "text_bytes": 0, "bound": False}
    for split, c in counts.items():
        bound = c["rows"] is None or c["patches"] is None
        rows = c["rows"] if c["rows"] is not None else c["max_rows"]
        patches = c["patches"] if c["patches"] is not None else c["max_patches"]
        text_bytes = c["text_bytes"] if c["text_bytes"] is not None else rows * TEXT_BYTES_PER_ROW
        cache = cfg.estimate_cache_bytes(config, rows, patches, text_bytes)
        table.append([
            split,
            f"{c['rows']:,}" if c["rows"] is not None else f"unknown (<= {c['max_rows']:,})",
            f"{c['patches']:,}" if c["patches"] is not None else f"unknown (<= {c['max_patches']:,})",
            ("<= " if bound else "") + _gb(cache),
        ])
        if split != "total":
            summed["rows"] += rows
            summed["patches"] += patches
            summed["text_bytes"] += text_bytes
            summed["bound"] |= bound
    if len(counts) > 1 and "total" not in counts:
        le = "<= " if summed["bound"] else ""
        cache = cfg.estimate_cache_bytes(config, summed["rows"], summed["patches"], summed["text_bytes"])
        table.append(["total", le + f"{summed['rows']:,}", le + f"{summed['patches']:,}", le + _gb(cache)])
    return table


def _print_table(rows: List[List[str]], markdown: bool = False) -> None:
    if markdown:
        print("| " + " | ".join(rows[0]) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(rows[0]))) + "|")
        for row in rows[1:]:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))


def info(args) -> int:
    from bentxt import sources

    if not args.config:
        given = config_options(args)
        if given or args.data_dir or args.data_files:
            flags = ", ".join(flag(o) for o in given) or "--data-dir/--data-files"
            raise UsageError(f"{flags} need a CONFIG: {PROG} info CONFIG ...")
        print(f"{len(cfg.CONFIGS)} configs: <sensor>-<task>[-<split>]")
        print("  sensors:", ", ".join(cfg.SENSORS), "  tasks:", ", ".join(cfg.TASKS), "  splits:", ", ".join(cfg.SPLITS))
        for task, types in cfg.TASKS.items():
            print(f"  task {task}: type {' + '.join(types)}")
        print(f"`{PROG} info CONFIG` shows a config's features, split sizes and cache size.")
        return 0
    name, options = config_request(args, args.config)
    data_files = _data_files(args)
    config = _resolve(name, data_dir=args.data_dir, data_files=data_files, **options)
    print(f"config {config.name}: {config.description} (layout={config.layout})"
          + (f"; options {config.options()}" if config.options() else ""))
    print("features (PairBands: decoded to numpy arrays of that shape and dtype):")
    for feature_name, feature in cfg.features_for(config).items():
        print(f"  {feature_name}: {feature}")
    if args.data_dir or data_files:
        path = sources.resolve(config, ())["annotations"]
        counts = parquet_counts(config, path)
        what = "the release parquet" if sources.is_release_file(path, "annotations") else "not the release parquet"
        print(f"split sizes in {path} ({what}); cache sizes estimated (bigearthnet_txt.estimate_cache_bytes):")
    else:
        counts = release_counts(config)
        filtered = any(v is not None for v in config.filters.values())
        print("split sizes of the release (exact where published: task all, bench per type, captions; "
              "'unknown (<= n)' where not" + (", and with filters" if filtered else "") + ");")
        print(f"cache sizes estimated (bigearthnet_txt.estimate_cache_bytes, texts ~{TEXT_BYTES_PER_ROW} B/row):")
    _print_table(size_table(config, counts), markdown=args.markdown)
    return 0


# ----------------------------------------------------------------------------- show


def _find(dataset, split: str, layout: str, index: Optional[int], row_id: Optional[int]):
    """(example index, annotation index) of --index / --id in a prepared split."""
    if row_id is None:
        i = 0 if index is None else index
        if not -dataset.num_rows <= i < dataset.num_rows:
            raise UsageError(f"--index {i}: split {split} has {dataset.num_rows} examples")
        return i % dataset.num_rows, None
    if layout == "annotation":
        ids = dataset["ID"]
        if row_id in ids:
            return ids.index(row_id), None
    else:
        start = 0
        for batch in _bar(dataset.select_columns(["annotations"]).iter(batch_size=1000), desc=f"Looking for ID {row_id}",
                          total=-(-dataset.num_rows // 1000), unit=" batches"):
            for j, texts in enumerate(batch["annotations"]):
                for k, a in enumerate(texts):
                    if a["ID"] == row_id:
                        return start + j, k
            start += len(batch["annotations"])
    raise DataError(f"--id {row_id}: no such annotation in split {split}")


def _matches(example: dict, layout: str, position: int, index: Optional[int], row_id: Optional[int]):
    """For streaming: whether this example is the one asked for, and the annotation index."""
    if row_id is None:
        return position == (index or 0), None
    if layout == "annotation":
        return example["ID"] == row_id, None
    for k, a in enumerate(example["annotations"]):
        if a["ID"] == row_id:
            return True, k
    return False, None


def show(args) -> int:
    """Write a PNG of one example (S2 true colour, S1 false colour, box, point, question and answer)."""
    from bentxt.tools.plot import plot

    builder = build(args, args.config, default_data_dir=sample_dir())
    config = builder.config
    split = config.split or ("test" if "test" in config.splits else config.splits[0])
    # an ID is looked for in every split of the config (test first), an --index in the one split
    splits = [split] + ([s for s in config.splits if s != split] if args.id is not None else [])
    annotation = args.annotation
    if args.streaming:
        streams = builder.as_streaming_dataset()
        for split in (s for s in splits if s in streams):
            stream = _bar(streams[split], desc=f"Streaming {split}", unit=" examples")
            found = next(((p, c) for p, c in enumerate(stream) if _matches(c, config.layout, p, args.index, args.id)[0]), None)
            if found is not None:
                i, example = found
                k = _matches(example, config.layout, i, args.index, args.id)[1]
                annotation = k if k is not None else annotation
                break
        else:
            raise DataError(f"no such example in split(s) {', '.join(splits)} (--index {args.index}, --id {args.id})")
    else:
        builder.download_and_prepare(num_proc=args.num_proc)
        prepared = builder.as_dataset()
        for split in (s for s in splits if s in prepared):
            try:
                i, k = _find(prepared[split], split, config.layout, args.index, args.id)
            except DataError:  # not in this split: the next one
                continue
            annotation = k if k is not None else annotation
            example = prepared[split][i]
            break
        else:
            raise DataError(f"--id {args.id}: no such annotation in split(s) {', '.join(splits)}")
    fig = plot(example, annotation=annotation, bands=config.image_bands)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fig.savefig(args.output, dpi=args.dpi)
    row = example["annotations"][annotation or 0] if config.layout == "patch" else example
    print(f"wrote {args.output}: {config.name} split {split} example {i} "
          f"(ID {row['ID']}, {row['type']}, patch {example['patch_id']})")
    return 0


# ----------------------------------------------------------------------------- prepare, export


def _load_call(builder, args) -> str:
    """The ``load_dataset`` call that reads the same cache."""
    config = builder.config
    parts = [repr("bigearthnet_txt"), repr(config.name)]
    if config.data_dir:
        parts.append(f"data_dir={config.data_dir!r}")
    if config.data_files:
        files = {k: list(v) for k, v in config.data_files.items()}
        parts.append(f"data_files={files!r}")
    if args.cache_dir:
        parts.append(f"cache_dir={args.cache_dir!r}")
    parts += [f"{k}={v!r}" for k, v in config.options().items()]
    return f"datasets.load_dataset({', '.join(parts)})"


def prepare(args) -> int:
    builder = build(args, args.config)
    builder.download_and_prepare(num_proc=args.num_proc, verification_mode=args.verification_mode)
    for split, part in builder.as_dataset().items():
        print(f"{split}: {part.num_rows} examples")
    print(f"cache: {builder.cache_dir} ({_gb(disk_usage(builder.cache_dir))} on disk)")
    for path in cache.store_paths(builder.cache_dir):  # the pixels, shared by every config of the source
        print(f"imagery store: {path} ({_gb(disk_usage(path))} on disk, shared by every config of its source)")
    print(f"load it with: import bigearthnet_txt, datasets; {_load_call(builder, args)}")
    return 0


def export_command(args) -> int:
    """Prepare a config, write it as a Parquet dataset folder (bentxt/export/writer.py), optionally upload it."""
    from bentxt.export.writer import export, push_to_hub

    if args.ray_address is not None and args.engine != "ray":
        raise UsageError("--ray-address needs --engine ray")
    name, options = config_request(args, args.config)
    data_files = _data_files(args)
    _resolve(name, data_dir=args.data_dir, data_files=data_files, **options)
    if args.engine == "ray":
        from bentxt.export.ray_engine import export as run_export

        options["ray_address"] = args.ray_address
    else:
        run_export = export
    root = run_export(
        name, args.output, data_dir=args.data_dir, data_files=data_files, cache_dir=args.cache_dir,
        num_proc=args.num_proc, name=args.name, min_shards=args.min_shards,
        progress=not args.quiet, **options,
    )
    print(f"wrote {args.name or name} to {root} (load_dataset({str(root)!r}, {(args.name or name)!r}))")
    if args.push_to_hub:
        print(f"uploaded {root} to {push_to_hub(root, args.push_to_hub, private=args.private)}")
    return 0


# ----------------------------------------------------------------------------- chat-export, score
# (bentxt/tools/chat.py, bentxt/tools/score.py)


def chat_export(args) -> int:
    """Write a config as a chat dataset (``messages`` + ``images``) for TRL / transformers; complete or not at all."""
    import shutil

    import datasets

    from bentxt.tools.chat import chat_dataset

    if os.path.exists(args.output) and os.listdir(args.output):
        raise UsageError(f"--output {args.output} exists and is not empty; give a new folder")
    builder = build(args, args.config, default_data_dir=sample_dir())
    if args.streaming:
        splits = {s: builder.as_streaming_dataset(split=s) for s in builder.config.splits}
    else:
        builder.download_and_prepare(num_proc=args.num_proc)
        splits = dict(builder.as_dataset())
    options = dict(image=args.image, tags=args.tags, format_hints=args.format_hints, system=args.system)
    chats = {}
    for split, part in splits.items():
        chat = chat_dataset(part, builder.config, **options)
        if args.streaming:  # materialise: the export is a plain Dataset either way
            chat = datasets.Dataset.from_generator(lambda c=chat: iter(c), features=chat.features, split=split)
        chats[split] = chat
    partial = f"{args.output.rstrip('/')}.partial-{os.getpid()}"  # renamed into place once complete
    shutil.rmtree(partial, ignore_errors=True)
    try:
        if args.format == "arrow":
            datasets.DatasetDict(chats).save_to_disk(partial)
        else:
            os.makedirs(partial)
            for split, chat in chats.items():
                chat.to_parquet(os.path.join(partial, f"{split}-00000-of-00001.parquet"))
        if os.path.isdir(args.output):
            os.rmdir(args.output)  # empty (checked above)
        os.replace(partial, args.output)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    for split, chat in chats.items():
        print(f"{split}: {chat.num_rows} conversations")
    how = (f"datasets.load_from_disk({args.output!r})" if args.format == "arrow"
           else f"datasets.load_dataset('parquet', data_dir={args.output!r})")
    print(f"wrote {builder.config.name} as chat data (image={args.image}, tags={args.tags}) to {args.output}; load it with {how}")
    return 0


def score_command(args) -> int:
    """Score a predictions file against a split's references (default: bench) and print the table."""
    from bentxt.tools import score
    from bentxt import sources

    name, options = config_request(args, args.config)
    config = _resolve(name, data_dir=args.data_dir, data_files=_data_files(args), **options)
    split = config.split or "bench"
    parquet = sources.resolve(config, ())["annotations"]
    predictions = score.read_predictions(args.predictions)
    references = score.read_references(parquet, config.selection(split))
    if references.num_rows == 0:
        raise DataError(f"config {config.name} has no annotations in split {split} of {parquet}")
    report = score.score(predictions, references)
    print(f"{args.predictions}: {len(predictions)} predictions scored against {references.num_rows} annotations "
          f"of split {split} ({config.name}); {report.missing} without a prediction count as wrong")
    print(report.format(markdown=args.markdown))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            f.write(report.to_json())
    if args.plot:
        print(f"plot: {report.plot(args.plot, metric=args.metric)}")
    return 0


# ----------------------------------------------------------------------------- the parser


CONFIG_HELP = f"<sensor>-<task>[-<split>], e.g. s2-vqa-bench ({PROG} info lists them)"
#: what ``--help`` says: plain text for a terminal (the module docstring is reST for developers)
DESCRIPTION = f"""BigEarthNet.txt (Sentinel-1/2 image pairs and their texts) as a Hugging Face dataset.

Every command that reads data takes a config name and any config option as a flag
(e.g. --countries Austria --bands RGB), plus --data-dir or --data-files. The cache
is the one load_dataset("bigearthnet_txt", ...) reads. --quiet hides progress bars,
--debug shows tracebacks.

Exit status: 0 done; 1 the data or the run failed; 2 the command line is wrong
(including an option value the data does not have); 130 interrupted.
Run "{PROG} COMMAND --help" for a command's options."""
#: what ``demo`` prepares from the embedded sample unless told otherwise (the library itself has no default config)
DEMO_CONFIG = "s1s2-all"
#: where ``export`` runs: this machine, or a Ray cluster (bentxt/export/ray_engine.py)
ENGINES = ("local", "ray")
SAMPLE_DEFAULT = "default: the embedded synthetic sample, unless --data-files or --image-source is given"


def build_parser() -> argparse.ArgumentParser:
    # global flags: on the main parser (before the subcommand) and on each subcommand (after it); SUPPRESS keeps a
    # subcommand from resetting what was given before it (each parser gets its own action objects: argparse shares
    # actions with parents, and a default set on one would reach the other)
    def global_flags(p: argparse.ArgumentParser, default) -> None:
        p.add_argument("--quiet", action="store_true", default=default, help="only warnings and errors, no progress bars")
        p.add_argument("--debug", action="store_true", default=default, help="debug logs, and the traceback of an error")

    everywhere = _Parser(add_help=False)
    global_flags(everywhere, argparse.SUPPRESS)
    parser = _Parser(prog=PROG, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    global_flags(parser, False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, run, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[everywhere])
        p.set_defaults(run=run)
        return p

    p = command("demo", demo, "run the whole pipeline on the embedded synthetic sample (no network)")
    p.add_argument("--config", default=DEMO_CONFIG, help=CONFIG_HELP + f" (default {DEMO_CONFIG}: the sample is small)")
    p.add_argument("--examples", type=int, default=4, help="how many examples (one per text type) to print")
    _add_config_options(p, building=True, data_dir_help=SAMPLE_DEFAULT)

    p = command("info", info, "list configs, or one config's features, split sizes and estimated cache size")
    p.add_argument("config", nargs="?", help=CONFIG_HELP + "; none: list the configs")
    p.add_argument("--markdown", action="store_true", help="print the size table as markdown")
    _add_config_options(p, building=False, data_dir_help="default: the release's recorded counts")

    p = command("show", show, "write a PNG of one example: images, box, point, question and answer")
    p.add_argument("config", help=CONFIG_HELP)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, default=None, help="position of the example in the split (default 0)")
    which.add_argument("--id", type=int, default=None, help="the annotation's ID")
    p.add_argument("--annotation", type=int, default=None, help="patch layout: which of the patch's texts (default 0)")
    p.add_argument("--streaming", action="store_true", help="read the imagery until the example is found, without preparing")
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("--output", "-o", required=True, help="PNG file to write")
    _add_config_options(p, building=True, data_dir_help=SAMPLE_DEFAULT)

    p = command("prepare", prepare, "download and prepare a config into the Arrow cache (the one load_dataset reads)")
    p.add_argument("config", help=CONFIG_HELP)
    p.add_argument("--verification-mode", default="basic_checks", choices=("no_checks", "basic_checks", "all_checks"))
    _add_config_options(p, building=True)

    p = command("export", export_command, "write a config as Parquet + dataset card, ready for the Hub and its viewer")
    p.add_argument("config", help=CONFIG_HELP)
    p.add_argument("--output", "-o", required=True, help="dataset folder (other configs already in it are kept)")
    p.add_argument("--name", default=None, help="config name in the export (default: CONFIG; set it for variants)")
    p.add_argument("--min-shards", type=int, default=4, help="files per split at least (ranks / DataLoader workers)")
    p.add_argument("--engine", choices=ENGINES, default="local",
                   help="local: this machine (--num-proc processes); ray: a Ray cluster, one task per S2 tile run "
                        "(pip install 'bigearthnet-txt[ray]')")
    p.add_argument("--ray-address", metavar="ADDR", default=None,
                   help="with --engine ray: the cluster (host:6379, auto; default RAY_ADDRESS, else a local Ray); "
                        "the cache and --output must be on storage every node shares")
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="then upload the folder to this dataset repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    _add_config_options(p, building=True)

    from bentxt.tools.chat import IMAGE_CHOICES, TAG_CHOICES

    p = command("chat-export", chat_export, "write a config as chat data (messages + images) for TRL / transformers")
    p.add_argument("config", help=CONFIG_HELP)
    p.add_argument("--output", "-o", required=True, help="new folder for the chat dataset")
    p.add_argument("--image", choices=IMAGE_CHOICES, default="auto",
                   help="rgb: S2 true colour; s1: VV/VH false colour; bands: float32 arrays; auto: rgb if S2 is read")
    p.add_argument("--tags", choices=TAG_CHOICES, default="keep", help="keep or strip the <point>/<ref> tags")
    p.add_argument("--format-hints", action="store_true", help="state the answer format in each prompt")
    p.add_argument("--system", default=None, help="a system prompt in every conversation")
    p.add_argument("--format", choices=("arrow", "parquet"), default="arrow", help="save_to_disk folder or Parquet files")
    p.add_argument("--streaming", action="store_true", help="read the imagery as a stream instead of preparing the cache")
    _add_config_options(p, building=True, data_dir_help=SAMPLE_DEFAULT)

    p = command("score", score_command, "score a predictions file (ID, prediction) on a split (default bench)")
    p.add_argument("predictions", help="JSONL, CSV or Parquet with the columns ID and prediction")
    p.add_argument("--config", default=DEMO_CONFIG, help=CONFIG_HELP + " (its task and filters select the rows)")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--json", metavar="PATH", default=None, help="also write the table as JSON")
    p.add_argument("--plot", metavar="PNG", default=None, help="also write a bar chart (needs matplotlib)")
    p.add_argument("--metric", default="accuracy", help="the plotted metric (accuracy, iou, acc@0.5, bleu4, rouge_l, cider_d)")
    _add_config_options(p, building=False, data_dir_help="default: the release parquet")
    return parser


def _configure_output(args) -> None:
    import datasets

    if not logger.handlers:  # the builder module installs the same one; info may run without it
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("bigearthnet_txt: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if args.debug else logging.WARNING if args.quiet else logging.INFO)
    if args.quiet:
        datasets.disable_progress_bars()


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; returns the exit status (0, 1 data/run error, 2 usage error, 130 interrupted)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        debug = args.debug
        _configure_output(args)
        return args.run(args)
    except UsageError as err:
        return _fail(err, 2, debug)
    except ann.FilterValueError as err:  # an option value the data does not have: the command line is wrong
        return _fail(err, 2, debug)
    except KeyboardInterrupt as err:
        print(f"{PROG}: interrupted", file=sys.stderr)
        if debug:
            traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (one line for the user; --debug for the rest)
        return _fail(err, 1, debug)


if __name__ == "__main__":
    sys.exit(main())
