"""``data_dir`` on a folder of millions of files: resolving the builder must not walk it.

    python benchmarks/data_dir_scan.py [--files 1000000] [--work DIR]

The release's extracted trees hold 7.7 M GeoTIFFs. ``datasets``' packaged-module
factory lists every file below ``data_dir`` (docs/datasets-notes.md#data-files-scan), which took
208 s for 100,000 files before. This makes a folder with the release files
(the embedded sample) plus ``--files`` empty files in 1,000 sub-folders, then
times ``load_dataset_builder("bigearthnet_txt", ..., data_dir=folder)`` against
``os.walk`` of the same folder (what any listing costs) in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import Row, format_table, log, machine_line  # noqa: E402


def make_folder(root: Path, files: int) -> None:
    from bentxt.tools.cli import sample_dir

    root.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(sample_dir()):
        shutil.copy(os.path.join(sample_dir(), name), root / name)
    per_dir = max(1, files // 1000)
    made = 0
    for d in range(1000):
        folder = root / "BigEarthNet-S2-extra" / f"d{d:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(min(per_dir, files - made)):
            os.close(os.open(folder / f"f{k:05d}.tif", os.O_CREAT | os.O_WRONLY, 0o644))
        made += min(per_dir, files - made)
        if made >= files:
            break


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--work", help="folder to build the tree in (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bentxt-scan-"))
    try:
        root = work / "data"
        log(f"making {args.files:,} empty files under {root}")
        make_folder(root, args.files)
        import datasets

        import bigearthnet_txt  # noqa: F401

        t = time.perf_counter()
        builder = datasets.load_dataset_builder("bigearthnet_txt", "s2-vqa", data_dir=str(root), cache_dir=str(work / "cache"))
        ours = time.perf_counter() - t
        t = time.perf_counter()
        listed = sum(len(files) for _, _, files in os.walk(root))
        walk = time.perf_counter() - t
        rows = [Row(f"load_dataset_builder, data_dir with {listed:,} files", ours, walk, "s", higher_is_better=False,
                    absolute_max=2, target_text="< 2 s")]
        print(machine_line())
        print(format_table(rows, markdown=True))
        print(f"- baseline: one os.walk of the folder ({listed:,} files); config id {builder.config_id}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
