"""bentxt/compat.py: every private use of another library is registered there, and the README lists exactly those."""

import re
from pathlib import Path


from bentxt import compat
from private_api_scan import private_uses

ROOT = Path(__file__).resolve().parent.parent


def _readme_list():
    """``(library, name)`` of the README's bullets between the private-API markers."""
    text = (ROOT / "README.md").read_text()
    start, end = text.index("<!-- private-api: start -->"), text.index("<!-- private-api: end -->")
    return [m.groups() for m in re.finditer(r"^- ([\w.]+): `([^`]+)`", text[start:end], re.M)]


def _registered_tokens():
    """Every ``_name`` the registry mentions (an entry may name several attributes of one class)."""
    return {token for use in compat.PRIVATE_API for token in re.findall(r"\b_\w+", use.name)}


def test_the_readme_lists_exactly_the_registry():
    text = (ROOT / "README.md").read_text()
    start, end = text.index("<!-- private-api: start -->"), text.index("<!-- private-api: end -->")
    assert text[start:end].split("\n", 1)[1].strip() == compat.readme_list()  # python -c "...compat.readme_list()"
    listed = _readme_list()
    assert len(listed) == len(set(listed)), "a private use is listed twice in the README"
    assert sorted(listed) == sorted((use.library, use.name) for use in compat.PRIVATE_API)


def test_every_entry_says_where_why_and_what_it_buys():
    for use in compat.PRIVATE_API:
        assert use.why and use.benefit, use
        for file in use.used_in.split(", "):
            assert (ROOT / file).exists(), f"{use.name}: {file} does not exist"
        if use.routed:
            assert use.used_in == "bentxt/compat.py", use


def test_the_scan_finds_known_private_uses():
    """The scanner sees the three kinds it looks for (so an empty result below means something)."""
    names = {name for _, _, name in private_uses()}
    assert "datasets.formatting._register_formatter" in names  # an import
    assert "NumpyArrowExtractor._arrow_array_to_numpy" in names  # an override
    assert any(name.endswith("_recursive_tensorize") for name in names)  # super()._x


def test_every_private_use_in_the_code_is_registered():
    registered = _registered_tokens()
    missing = [use for use in private_uses() if re.findall(r"_\w+$", use[2])[0].lstrip(".") not in registered]
    assert missing == [], f"private API used but not registered in bentxt/compat.py: {missing}"


def test_registered_names_are_the_ones_a_scan_reports():
    """No stale entries: each registered underscore name (but the attributes the scan cannot attribute to a library:
    ours define ``_fs`` and ``_output_dir``-like names too) is still used somewhere."""
    used = {re.findall(r"_\w+$", name)[0] for _, _, name in private_uses()}
    files = [ROOT / "bigearthnet_txt.py", *sorted((ROOT / "bentxt").glob("*.py"))]
    source = "\n".join(path.read_text() for path in files if path.name != "compat.py")
    for use in compat.PRIVATE_API:
        for token in re.findall(r"\b_\w+", use.name):
            assert token in used or token in source or token in (ROOT / "bentxt/compat.py").read_text(), token


def test_no_private_use_outside_the_compat_module():
    outside = [use for use in private_uses() if use[0] != "bentxt/compat.py"]
    assert outside == []
