"""Writes ``dataset_infos/dataset_infos.json`` from the code and ``sources.json``.

The JSON is what a user (and the Hub) reads without running anything: per
config its features, the release's split sizes where they are known, and the
download checksums. It is generated, never edited: ``python -m bentxt.tools.infos``
rewrites it and ``--check`` (run by the tests) fails when it is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict


def build() -> Dict[str, dict]:
    from bentxt import metadata
    from bentxt import sources
    from bentxt.config import CONFIGS, features_for

    release = sources.release()
    infos = {}
    for config in CONFIGS.values():
        keys = ("annotations",) + config.sensors
        splits = {}
        if config.task == "all":  # per-task split sizes are not published
            rows = release["annotations"]["split_rows"]
            splits = {s: {"name": s, "num_examples": rows[s]} for s in config.splits}
        infos[config.name] = {
            "description": config.description,
            "features": features_for(config).to_dict(),
            "splits": splits,
            "download_checksums": {
                release[k]["url"]: {
                    "num_bytes": release[k]["num_bytes"], "checksum": release[k]["sha256"], "md5": release[k]["md5"]
                }
                for k in keys
            },
            "license": metadata.LICENSE,
            "homepage": metadata.HOMEPAGE,
        }
    return infos


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = Path(__file__).resolve().parents[2] / "dataset_infos" / "dataset_infos.json"
    if "--check" in argv:
        if not path.is_file() or path.read_text() != render():
            print(f"{path} is stale: run python -m bentxt.tools.infos", file=sys.stderr)
            return 1
        return 0
    path.write_text(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
