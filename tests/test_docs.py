"""The facts the code relies on are in the repository's own docs: every ``docs/<file>.md#<anchor>`` cited anywhere
exists, no citation points outside the repository, and the package names no path of a development machine."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"docs/([\w.-]+\.md)(?:#([\w-]+))?")


def _sources():
    files = [ROOT / "bigearthnet_txt.py", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for folder in ("bentxt", "tests", "benchmarks", "examples"):
        files += sorted((ROOT / folder).rglob("*.py"))
    return [f for f in files if f.exists()]


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(doc: Path) -> set:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", doc.read_text(), re.M)}


def test_slug_is_githubs():
    assert slug("Publisher's loader") == "publishers-loader"
    assert slug("GeoTIFF properties") == "geotiff-properties"
    assert slug("metadata.parquet") == "metadataparquet"


def test_every_cited_anchor_exists():
    cited, broken = 0, []
    for file in _sources():
        for m in CITATION.finditer(file.read_text()):
            doc = ROOT / "docs" / m.group(1)
            cited += 1
            if not doc.exists():
                broken.append(f"{file.relative_to(ROOT)}: docs/{m.group(1)} does not exist")
            elif m.group(2) and m.group(2) not in anchors(doc):
                broken.append(f"{file.relative_to(ROOT)}: docs/{m.group(1)} has no section #{m.group(2)}")
    assert broken == []
    assert cited >= 45  # the code cites the docs (the 45 citations of files outside the repository, replaced)


def test_the_docs_have_the_sections_the_code_needs():
    assert {"counts", "annotation-parquet", "value-sets", "text-formats", "boxes-and-points", "patch-names", "archives",
            "tar-layout", "geotiff-properties", "publishers-loader", "lmdb"} <= anchors(ROOT / "docs" / "release.md")
    assert {"registration", "data-files-scan", "streaming-archives", "numpy-format",
            "hub-layout"} <= anchors(ROOT / "docs" / "datasets-notes.md")
    release = (ROOT / "docs" / "release.md").read_text()
    for fact in ("464,044", "9,553,962", "54,439,153,171", "63,251,710,377", "a55eaa2cdf6a917e296bd6601ec1e348",
                 "d3b97f999456016bb13c2a8e94b8f47825654f07a0394a6b266a38b750ca1554", "29,196", "58,024"):
        assert fact in release


def test_no_citation_points_outside_the_repository():
    outside = re.compile(r"facts file|facts,? sections? \d|facts section|hf-datasets-notes|\(notes, section|"
                         r"notes section \d|shared/reference")
    found = [f"{f.relative_to(ROOT)}:{n}" for f in _sources() if f.name != "test_docs.py"
             for n, line in enumerate(f.read_text().splitlines(), 1) if outside.search(line)]
    assert found == []


def test_the_package_names_no_machine_path():
    machine = re.compile(r"(?<![\w.])/(?:work|root|home|Users)/")
    package = [ROOT / "bigearthnet_txt.py", *sorted((ROOT / "bentxt").rglob("*.py"))]
    found = [f"{f.relative_to(ROOT)}:{n}" for f in package for n, line in enumerate(f.read_text().splitlines(), 1)
             if machine.search(line)]
    assert found == []
