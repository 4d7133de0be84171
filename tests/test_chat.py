"""bentxt.tools.chat: every task of the embedded sample as conversations in the documented vision-chat schema.

The schema (TRL ``dataset_formats`` "Vision datasets"; transformers multimodal
chat templates): an ``images`` list and ``messages`` of ``{"role", "content"}``
where content is a list of ``{"type": "image"}`` / ``{"type": "text", "text"}``
parts, one image part per image. No model or processor is downloaded; a
template in the style of the Idefics/LLaVA ones renders the messages instead.
"""

from __future__ import annotations

import datasets
import jinja2
import numpy as np
import pytest
from make_fixtures import REAL_PATCH_ID
from PIL import Image

from bentxt.tools import chat
from bentxt.imagery import raster
from bentxt.bands import BAND_COMBINATIONS
from bentxt.tools.cli import main, sample_dir
from bentxt.registration import builder_for

#: a chat template in the style of vision models' templates (image parts -> one placeholder token)
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}:{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif %}"
    "{% endfor %}\n{% endfor %}"
)


def check_schema(example: dict, n_turns: int = 1) -> None:
    """The documented structure, exactly: keys, roles, part types, one image part per image."""
    assert set(example) >= {"messages", "images"}
    messages, images = example["messages"], example["images"]
    assert [m["role"] for m in messages] == ["user", "assistant"] * n_turns
    for m in messages:
        assert set(m) == {"role", "content"} and isinstance(m["content"], list) and m["content"]
        for part in m["content"]:
            assert part["type"] in ("image", "text")
            if part["type"] == "text":
                assert isinstance(part["text"], str) and part["text"]
            else:
                assert part.get("text") is None
    image_parts = [p for m in messages for p in m["content"] if p["type"] == "image"]
    assert len(image_parts) == len(images) == 1
    assert messages[0]["content"][0]["type"] == "image"  # the image comes before the prompt
    assert all(p["type"] == "text" for m in messages if m["role"] == "assistant" for p in m["content"])
    rendered = jinja2.Template(TEMPLATE).render(messages=messages)
    assert rendered.count("<image>") == 1


@pytest.fixture(scope="module")
def sample_builder(tmp_path_factory):
    return builder_for("s1s2-all", data_dir=sample_dir(), cache_dir=str(tmp_path_factory.mktemp("chat-cache")))


@pytest.fixture(scope="module")
def streamed(sample_builder):
    return {split: list(sample_builder.as_streaming_dataset(split=split)) for split in sample_builder.config.splits}


def test_every_task_of_the_sample(streamed):
    rows = [r for part in streamed.values() for r in part]
    seen = set()
    for row in rows:
        out = chat.to_chat(row)
        check_schema(out)
        user, assistant = out["messages"]
        assert user["content"][1]["text"] == row["input"]  # tags kept, text as released
        assert assistant["content"][0]["text"] == row["output"]
        picture = out["images"][0]
        assert isinstance(picture, Image.Image) and picture.mode == "RGB" and picture.size == (120, 120)
        seen.add((row["type"], row["category"]))
    assert {t for t, _ in seen} == {"binary", "mcq", "captioning", "bounding box"}
    assert {c for _, c in seen} >= {"presence", "area", "count", "adjacency", "country", "season", "climate zone",
                                    "point", "reference", "None"}


def test_tags_hints_and_images(streamed):
    rows = {r["ID"]: r for part in streamed.values() for r in part}
    point = rows[27527]  # real row: <point>(0.35, 0.16)</point>
    stripped = chat.to_chat(point, tags="strip")["messages"][0]["content"][1]["text"]
    assert stripped == "Generate a bounding box for the land cover class instance found at (0.35, 0.16) in the satellite image."
    tokens = chat.to_chat(rows[27530], point_token=("<p>", "</p>"), ref_token=("[", "]"))["messages"][0]["content"][1]["text"]
    assert tokens == "Identify a continuous patch of [broad-leaved forest]."
    hinted = chat.to_chat(rows[27534], format_hints=True)["messages"][0]["content"][1]["text"]
    assert hinted.endswith("d) Agro-forestry areas and Permanent crops " + chat.FORMAT_HINTS["mcq"])
    box_hint = chat.to_chat(point, format_hints=True)["messages"][0]["content"][1]["text"]
    assert "[x0 y0, x1 y1]" in box_hint and "origin at the top left" in box_hint
    caption = chat.to_chat(rows[27533], format_hints=True)["messages"][0]["content"][1]["text"]
    assert caption == rows[27533]["input"]  # captions get no hint

    rgb = np.asarray(chat.to_chat(point, image="rgb")["images"][0])
    s1 = np.asarray(chat.to_chat(point, image="s1")["images"][0])
    assert rgb.shape == s1.shape == (120, 120, 3) and rgb.dtype == np.uint8 and not np.array_equal(rgb, s1)
    assert np.array_equal(np.asarray(chat.to_chat(point)["images"][0]), rgb)  # auto = rgb with S2
    bands = chat.to_chat(point, image="bands")["images"][0]
    groups = {g: point[g] for g in ("s2_10m", "s2_20m", "s2_60m", "s1")}
    assert bands.dtype == np.float32 and bands.shape == (14, 120, 120)
    assert np.array_equal(bands, raster.stack_groups(groups, BAND_COMBINATIONS["all"], 120))

    s2_only = {k: v for k, v in point.items() if k != "s1"}
    with pytest.raises(ValueError, match=r"image=s1 needs the bands \['VV', 'VH'\]"):
        chat.to_chat(s2_only, image="s1")
    with pytest.raises(ValueError, match="image='png': choose one of"):
        chat.to_chat(point, image="png")


def test_batches_prepared_and_streamed(sample_builder):
    sample_builder.download_and_prepare()
    prepared = sample_builder.as_dataset(split="test")
    converted = chat.chat_dataset(prepared, sample_builder.config, tags="strip")
    assert converted.column_names == ["messages", "images", "ID", "patch_id"] and converted.num_rows == prepared.num_rows
    assert converted["ID"] == prepared["ID"]
    first = converted[0]
    check_schema(first)
    assert isinstance(first["images"][0], Image.Image) and first["images"][0].size == (120, 120)
    prompts = [m["content"][-1]["text"] for row in converted["messages"] for m in row if m["role"] == "user"]
    assert any("(0.35, 0.16)" in p for p in prompts) and not any("<point>" in p or "<ref>" in p for p in prompts)

    lazily = prepared.with_transform(lambda batch: chat.to_chat(batch))  # with_transform hands over batches
    batch = lazily[:3]
    assert len(batch["messages"]) == 3
    for messages, images in zip(batch["messages"], batch["images"]):
        check_schema({"messages": messages, "images": images})

    stream = chat.chat_dataset(sample_builder.as_streaming_dataset(split="test"), sample_builder.config, image="s1")
    streamed = list(stream)
    assert sorted(r["ID"] for r in streamed) == sorted(prepared["ID"])
    for row in streamed:
        check_schema(row)


def test_patch_layout_is_one_conversation_per_pair(tmp_path):
    builder = builder_for("s2-all-test", data_dir=sample_dir(), cache_dir=str(tmp_path), layout="patch")
    pairs = list(builder.as_streaming_dataset(split="test"))
    real = next(p for p in pairs if p["patch_id"] == REAL_PATCH_ID)
    out = chat.to_chat(real, system="You describe Sentinel-2 patches.")
    assert out["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "You describe Sentinel-2 patches."}]}
    check_schema({"messages": out["messages"][1:], "images": out["images"]}, n_turns=len(real["annotations"]))
    answers = [m["content"][0]["text"] for m in out["messages"] if m["role"] == "assistant"]
    assert answers == [a["output"] for a in real["annotations"]] and len(answers) == 18


def test_chat_export_cli(tmp_path):
    out = tmp_path / "chat"
    rc = main(["chat-export", "s2-vqa-bench", "--output", str(out), "--streaming", "--format-hints",
               "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert rc == 0
    saved = datasets.load_from_disk(str(out))
    assert list(saved) == ["bench"] and saved["bench"].features == {
        **chat.chat_features("auto"), "ID": datasets.Value("int64"), "patch_id": datasets.Value("string")}
    for row in saved["bench"]:
        check_schema(row)
        assert row["messages"][0]["content"][1]["text"].endswith(("Answer yes or no.", chat.FORMAT_HINTS["mcq"]))
    assert not list(tmp_path.glob("chat.partial-*"))
    assert main(["chat-export", "s2-vqa-bench", "--output", str(out), "--streaming", "--quiet"]) == 2  # not over a result
