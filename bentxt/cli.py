"""``bigearthnet-txt`` / ``python -m bigearthnet_txt``: demo, info, prepare."""

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


def info(args) -> int:
    import bigearthnet_txt

    if not args.config:
        names = [c.name for c in bigearthnet_txt.BigEarthNetTxt.BUILDER_CONFIGS]
        print(f"{len(names)} configs: <sensor>-<task>[-<split>]")
        print("  sensors:", ", ".join(bigearthnet_txt.SENSORS), "  tasks:", ", ".join(bigearthnet_txt.TASKS),
              "  splits:", ", ".join(bigearthnet_txt.SPLITS))
        return 0
    builder = _builder(args.config, args.data_dir or sample_dir(), tempfile.mkdtemp(prefix="bigearthnet_txt-info-"), layout=args.layout)
    print(f"config {args.config} (layout={args.layout})")
    for name, feature in builder.info.features.items():
        print(f"  {name}: {feature}")
    return 0


def prepare(args) -> int:
    builder = _builder(args.config, args.data_dir, args.cache_dir, layout=args.layout)
    builder.download_and_prepare(num_proc=args.num_proc, verification_mode=args.verification_mode)
    for split, part in builder.as_dataset().items():
        print(f"{split}: {part.num_rows} examples")
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

    p = sub.add_parser("info", help="list configs, or the features of one config")
    p.add_argument("config", nargs="?")
    p.add_argument("--layout", default="annotation", choices=("annotation", "patch"))
    p.add_argument("--data-dir", default=None)
    p.set_defaults(run=info)

    p = sub.add_parser("prepare", help="download and prepare a config into the Arrow cache")
    p.add_argument("config")
    p.add_argument("--data-dir", default=None, help="folder holding BigEarthNet.txt.parquet and the .tar.zst archives")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--layout", default="annotation", choices=("annotation", "patch"))
    p.add_argument("--num-proc", type=int, default=None)
    p.add_argument("--verification-mode", default="basic_checks", choices=("no_checks", "basic_checks", "all_checks"))
    p.set_defaults(run=prepare)

    args = parser.parse_args(argv)
    logging.getLogger("bigearthnet_txt").setLevel(logging.WARNING if args.quiet else logging.INFO)
    if args.quiet:
        import datasets

        datasets.disable_progress_bars()
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
