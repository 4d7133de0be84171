"""``bigearthnet-txt`` / ``python -m bigearthnet_txt``: demo, info, show, prepare, export.

Long steps show progress bars with rate and ETA (datasets' own bars for
preparation, the archive reader's byte bars, ``tqdm`` here for reading the
parquet and scanning a stream); ``--quiet`` hides them and the info logs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from importlib import resources
from typing import List, Optional

import numpy as np


def sample_dir() -> str:
    """The embedded synthetic sample (real file formats, a few patches): bentxt/sample/."""
    return str(resources.files("bentxt").joinpath("sample"))


def _builder(config: str, data_dir: Optional[str], cache_dir: Optional[str], **config_kwargs):
    import bigearthnet_txt

    return bigearthnet_txt.BigEarthNetTxt(config_name=config, data_dir=data_dir, cache_dir=cache_dir, **config_kwargs)


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


def demo(args) -> int:
    """Prepare a config from the embedded sample, then stream it, and show that both agree."""
    cache = args.cache_dir or tempfile.mkdtemp(prefix="bigearthnet_txt-demo-")
    builder = _builder(args.config, sample_dir(), cache)
    print(f"Preparing {args.config} from the embedded synthetic sample in {sample_dir()}")
    builder.download_and_prepare(num_proc=args.num_proc)
    ds = builder.as_dataset()
    for split, part in ds.items():
        print(f"  {split}: {part.num_rows} examples")
    split = "test" if "test" in ds else next(iter(ds))
    arrays = [k for k, f in ds[split].features.items() if type(f).__name__ == "Array3D"]
    part = ds[split].with_format("numpy", columns=arrays, dtype=None, output_all_columns=True)
    shown = set()
    for i, kind in enumerate(ds[split]["type"]):
        if kind not in shown and len(shown) < args.examples:
            shown.add(kind)
            print(f"{split} example {i} ({kind}):\n{_describe(part[i])}")
    streamed = sum(1 for _ in builder.as_streaming_dataset(split=split))
    print(f"streaming {split}: {streamed} examples read from the .tar.zst archives (prepared: {ds[split].num_rows})")
    return 0 if streamed == ds[split].num_rows else 1


def _bar(iterable=None, **kwargs):
    """A progress bar with rate and ETA; silent under ``--quiet`` (datasets.disable_progress_bars)."""
    from datasets.utils.tqdm import tqdm

    return tqdm(iterable, **kwargs)


#: average UTF-8 bytes of input + output per annotation row in the release, for the cache estimate when the
#: parquet is not read (captions ~750 B, other rows 70-170 B, weighted by the type counts; < 0.2% of the images)
TEXT_BYTES_PER_ROW = 150


def _config(name: str, layout: str):
    """The registered config ``name`` with ``layout`` (no builder, no file access)."""
    import dataclasses

    import bigearthnet_txt as bt

    if name not in bt.BigEarthNetTxt.builder_configs:
        raise SystemExit(bt.config_name_error(name))
    config = dataclasses.replace(bt.BigEarthNetTxt.builder_configs[name], layout=layout)
    config.validate()
    return config


def release_counts(config) -> dict:
    """Per split of the release: rows and image pairs (None = not published) and their upper bounds.

    Rows come from the recorded split sizes (dataset_infos.json: known for the
    ``all`` task); image pairs from sources.json (every image pair has texts of
    every type except 112 bench pairs without a caption, so pairs are exact for
    ``all`` only and an upper bound for the other tasks).
    """
    from bentxt import sources

    recorded = sources.recorded_infos().get(config.name, {}).get("splits", {})
    annotations = sources.release()["annotations"]
    out = {}
    for split in config.splits:
        rows = recorded.get(split, {}).get("num_examples")
        exact = config.task == "all"
        out[split] = {
            "rows": rows,
            "patches": annotations["split_patches"][split] if exact else None,
            "max_rows": annotations["split_rows"][split],
            "max_patches": annotations["split_patches"][split],
            "text_bytes": None,
        }
    return out


def parquet_counts(config, urlpath: str) -> dict:
    """Per split: rows, image pairs and text bytes of ``config``'s selection in an annotation parquet."""
    import pyarrow.compute as pc

    from bentxt import annotations as ann

    selection = config.selection()
    columns = sorted({"type", "category", "split", "input", "output", config.key_column} | {c for c, _ in selection.filters})
    counts = {s: {"rows": 0, "keys": set(), "text_bytes": 0} for s in config.splits}
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
    """Rows of the ``info`` table: split, rows, image pairs, cache estimate per layout (``<=`` = upper bound)."""
    import dataclasses

    import bigearthnet_txt as bt

    layouts = {layout: dataclasses.replace(config, layout=layout) for layout in bt.LAYOUTS}
    table = [["split", "rows", "image pairs"] + [f"cache ({layout} layout)" for layout in layouts]]
    totals = {"rows": 0, "patches": 0, "text_bytes": 0, "cache": {k: 0 for k in layouts}, "bound": False}
    for split, c in counts.items():
        bound = c["rows"] is None or c["patches"] is None
        rows = c["rows"] if c["rows"] is not None else c["max_rows"]
        patches = c["patches"] if c["patches"] is not None else c["max_patches"]
        text_bytes = c["text_bytes"] if c["text_bytes"] is not None else rows * TEXT_BYTES_PER_ROW
        caches = {k: bt.estimate_cache_bytes(cfg, rows, patches, text_bytes) for k, cfg in layouts.items()}
        le = "<= " if bound else ""
        table.append([
            split,
            f"{c['rows']:,}" if c["rows"] is not None else f"unknown (<= {c['max_rows']:,})",
            f"{c['patches']:,}" if c["patches"] is not None else f"unknown (<= {c['max_patches']:,})",
            *(le + _gb(v) for v in caches.values()),
        ])
        totals["rows"] += rows
        totals["patches"] += patches
        totals["bound"] |= bound
        for k, v in caches.items():
            totals["cache"][k] += v
    if len(counts) > 1:
        le = "<= " if totals["bound"] else ""
        table.append(["total", le + f"{totals['rows']:,}", le + f"{totals['patches']:,}",
                      *(le + _gb(v) for v in totals["cache"].values())])
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
    import bigearthnet_txt

    if not args.config:
        names = [c.name for c in bigearthnet_txt.BigEarthNetTxt.BUILDER_CONFIGS]
        print(f"{len(names)} configs: <sensor>-<task>[-<split>]")
        print("  sensors:", ", ".join(bigearthnet_txt.SENSORS), "  tasks:", ", ".join(bigearthnet_txt.TASKS),
              "  splits:", ", ".join(bigearthnet_txt.SPLITS))
        for task, types in bigearthnet_txt.TASKS.items():
            print(f"  task {task}: type {' + '.join(types)}")
        print("`bigearthnet-txt info CONFIG` shows a config's features, split sizes and cache size.")
        return 0
    from bentxt import sources

    config = _config(args.config, args.layout)
    print(f"config {config.name}: {config.description} (layout={config.layout})")
    print("features:")
    for name, feature in bigearthnet_txt.features_for(config).items():
        print(f"  {name}: {feature}")
    if args.data_dir:
        path = sources._in_data_dir(args.data_dir, "annotations")
        counts = parquet_counts(config, path)
        what = "the release parquet" if sources.is_release_file(path, "annotations") else "not the release parquet"
        print(f"split sizes in {path} ({what}); cache sizes estimated (bigearthnet_txt.estimate_cache_bytes):")
    else:
        counts = release_counts(config)
        print("split sizes of the release (dataset_infos/; per-task counts are not published: upper bounds shown);")
        print(f"cache sizes estimated (bigearthnet_txt.estimate_cache_bytes, texts ~{TEXT_BYTES_PER_ROW} B/row):")
    _print_table(size_table(config, counts), markdown=args.markdown)
    return 0


def _find(dataset, split: str, layout: str, index: Optional[int], row_id: Optional[int]):
    """(example index, annotation index) of --index / --id in a prepared split."""
    if row_id is None:
        i = 0 if index is None else index
        if not -dataset.num_rows <= i < dataset.num_rows:
            raise SystemExit(f"--index {i}: split {split} has {dataset.num_rows} examples")
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
    raise SystemExit(f"--id {row_id}: no such annotation in split {split}")


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
    import os

    from bentxt.plot import plot

    data_dir = args.data_dir or sample_dir()
    cache = args.cache_dir or (tempfile.mkdtemp(prefix="bigearthnet_txt-show-") if args.data_dir is None else None)
    builder = _builder(args.config, data_dir, cache, layout=args.layout)
    config = builder.config
    if args.split is not None and args.split not in config.splits:
        raise SystemExit(f"--split {args.split}: config {config.name} has the splits {list(config.splits)}")
    annotation = args.annotation
    if args.streaming:
        split = args.split or ("test" if "test" in config.splits else config.splits[0])
        stream = builder.as_streaming_dataset(split=split)
        for position, candidate in enumerate(_bar(stream, desc=f"Streaming {split}", unit=" examples")):
            found, k = _matches(candidate, config.layout, position, args.index, args.id)
            if found:
                example, i = candidate, position
                annotation = k if k is not None else annotation
                break
        else:
            raise SystemExit(f"no such example in split {split} (--index {args.index}, --id {args.id})")
        example = {key: np.asarray(v) if key in builder.info.features and type(builder.info.features[key]).__name__ == "Array3D"
                   else v for key, v in example.items()}
    else:
        builder.download_and_prepare(num_proc=args.num_proc)
        prepared = builder.as_dataset()
        split = args.split or next((s for s in ("test", "validation", "train", "bench") if s in prepared), next(iter(prepared)))
        if split not in prepared:
            raise SystemExit(f"--split {split}: the prepared config has the splits {list(prepared)}")
        dataset = prepared[split]
        i, k = _find(dataset, split, config.layout, args.index, args.id)
        annotation = k if k is not None else annotation
        arrays = [key for key, f in dataset.features.items() if type(f).__name__ == "Array3D"]
        example = dataset.with_format("numpy", columns=arrays, dtype=None, output_all_columns=True)[i]
    fig = plot(example, annotation=annotation, bands=config.image_bands)
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(args.output, dpi=args.dpi)
    row = example["annotations"][annotation or 0] if config.layout == "patch" else example
    print(f"wrote {args.output}: {config.name} split {split} example {i} (ID {row['ID']}, {row['type']}, patch {example['patch_id']})")
    return 0


def prepare(args) -> int:
    builder = _builder(args.config, args.data_dir, args.cache_dir, layout=args.layout)
    builder.download_and_prepare(num_proc=args.num_proc, verification_mode=args.verification_mode)
    for split, part in builder.as_dataset().items():
        print(f"{split}: {part.num_rows} examples")
    return 0


def export_command(args) -> int:
    """Prepare a config, write it as a Parquet dataset folder (bentxt/export.py), optionally upload it."""
    from bentxt.export import export, push_to_hub

    root = export(
        args.config, args.output, data_dir=args.data_dir, cache_dir=args.cache_dir, num_proc=args.num_proc,
        name=args.name, min_shards=args.min_shards, layout=args.layout, progress=not args.quiet,
    )
    print(f"wrote {args.name or args.config} to {root} (load_dataset({str(root)!r}, {(args.name or args.config)!r}))")
    if args.push_to_hub:
        print(f"uploaded {root} to {push_to_hub(root, args.push_to_hub, private=args.private)}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="bigearthnet-txt", description=__doc__)
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the whole pipeline on the embedded synthetic sample (no network)")
    p.add_argument("--config", default="s1s2-all")
    p.add_argument("--examples", type=int, default=4, help="how many examples (one per text type) to print")
    p.add_argument("--num-proc", type=int, default=None)
    p.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder")
    p.set_defaults(run=demo)

    p = sub.add_parser("info", help="list configs, or one config's features, split sizes and estimated cache size")
    p.add_argument("config", nargs="?")
    p.add_argument("--layout", default="annotation", choices=("annotation", "patch"), help="layout of the features shown")
    p.add_argument("--data-dir", default=None,
                   help="count the rows in this folder's BigEarthNet.txt.parquet (default: the release's recorded sizes)")
    p.add_argument("--markdown", action="store_true", help="print the size table as markdown")
    p.set_defaults(run=info)

    p = sub.add_parser("show", help="write a PNG of one example: images, box, point, question and answer")
    p.add_argument("config")
    p.add_argument("--data-dir", default=None, help="default: the embedded synthetic sample")
    p.add_argument("--cache-dir", default=None, help="default: the datasets cache (a temporary folder for the sample)")
    p.add_argument("--split", default=None, help="default: the config's split, else test")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, default=None, help="position of the example in the split (default 0)")
    which.add_argument("--id", type=int, default=None, help="the annotation's ID")
    p.add_argument("--layout", default="annotation", choices=("annotation", "patch"))
    p.add_argument("--annotation", type=int, default=None, help="patch layout: which of the patch's texts (default 0)")
    p.add_argument("--streaming", action="store_true", help="read the archives until the example is found, without preparing")
    p.add_argument("--num-proc", type=int, default=None)
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("--output", "-o", required=True, help="PNG file to write")
    p.set_defaults(run=show)

    p = sub.add_parser("prepare", help="download and prepare a config into the Arrow cache")
    p.add_argument("config")
    p.add_argument("--data-dir", default=None, help="folder holding BigEarthNet.txt.parquet and the .tar.zst archives")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--layout", default="annotation", choices=("annotation", "patch"))
    p.add_argument("--num-proc", type=int, default=None)
    p.add_argument("--verification-mode", default="basic_checks", choices=("no_checks", "basic_checks", "all_checks"))
    p.set_defaults(run=prepare)

    p = sub.add_parser("export", help="write a config as Parquet + dataset card, ready for the Hub and its viewer")
    p.add_argument("config")
    p.add_argument("--output", "-o", required=True, help="dataset folder (other configs already in it are kept)")
    p.add_argument("--data-dir", default=None, help=f"default: the release; try it with the sample: {sample_dir()}")
    p.add_argument("--cache-dir", default=None, help="Arrow cache of the preparation step")
    p.add_argument("--layout", default="annotation", choices=("annotation", "patch"))
    p.add_argument("--name", default=None, help="config name in the export (default: CONFIG; set it for --layout patch)")
    p.add_argument("--num-proc", type=int, default=None)
    p.add_argument("--min-shards", type=int, default=4, help="files per split at least (ranks / DataLoader workers)")
    p.add_argument("--push-to-hub", metavar="REPO", default=None, help="then upload the folder to this dataset repo")
    p.add_argument("--private", action="store_true", help="create the Hub repo private")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    p.set_defaults(run=export_command)

    args = parser.parse_args(argv)
    import bigearthnet_txt  # noqa: F401  (its import sets the logger to INFO: import first, then set the level)

    logging.getLogger("bigearthnet_txt").setLevel(logging.WARNING if args.quiet else logging.INFO)
    if args.quiet:
        import datasets

        datasets.disable_progress_bars()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
