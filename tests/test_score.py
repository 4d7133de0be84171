"""bentxt.tools.score and ``bigearthnet-txt score``: each metric on hand-computed cases, then a whole split."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bentxt import config as cfg
from bentxt.tools import score
from bentxt.tools.cli import main


def test_binary_and_mcq_normalisation():
    assert [score.normalise_binary(p) for p in ("Yes", " no.", "YES.\n", "yes, it is")] == ["yes", "no", "yes", "yes, it is"]
    cases = {"c": "c", "C": "c", "c)": "c", "(b)": "b", "d.": "d", "a) 10 to 50%": "a", "b, because": "b",
             "": None, "e": None, "ab": None, "The answer is c": None, "cat": None}
    assert {p: score.mcq_letter(p) for p in cases} == cases


def test_boxes_and_iou():
    assert score.parse_box("[0.0 0.37, 1.0 1.0]") == (0.0, 0.37, 1.0, 1.0)
    assert score.parse_box("The box is [0.5 0.4, 0.1 0.2].") == (0.1, 0.2, 0.5, 0.4)  # corners put in order
    assert score.parse_box("[.5 0, 1. 1]") == (0.5, 0.0, 1.0, 1.0)  # the release's permissive number grammar
    assert score.parse_box("0.1 0.2 0.3 0.4") is None and score.parse_box("[0.1, 0.2, 0.3, 0.4]") is None
    # hand-computed: intersection 0.25 x 0.25 = 0.0625, union 0.25 + 0.25 - 0.0625 = 0.4375 -> 1/7
    assert score.box_iou((0, 0, 0.5, 0.5), (0.25, 0.25, 0.75, 0.75)) == pytest.approx(1 / 7)
    assert score.box_iou((0, 0, 1, 1), (0, 0, 1, 0.5)) == pytest.approx(0.5)
    assert score.box_iou((0, 0, 0.2, 0.2), (0.5, 0.5, 1, 1)) == 0.0
    assert score.box_iou((0.3, 0.3, 0.3, 0.3), (0.3, 0.3, 0.3, 0.3)) == 1.0


def test_tokens():
    assert score.tokenize('The forest, covering approximately 586,000 square meters (40.7%), "temperate".') == [
        "the", "forest", "covering", "approximately", "586,000", "square", "meters", "40.7", "temperate"]


def test_bleu4_by_hand():
    cand, ref = "the cat sat on the mat".split(), "the cat sat on a mat".split()
    # clipped precisions 5/6, 3/5, 2/4, 1/3; equal lengths: no brevity penalty
    assert score.bleu4([cand], [ref]) == pytest.approx((5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    # corpus level: counts summed over both pairs; candidate 9 tokens vs reference 10 -> BP exp(1 - 10/9)
    cands, refs = [cand, "a b c".split()], [ref, "a b c d".split()]
    p = (5 + 3) / (6 + 3) * (3 + 2) / (5 + 2) * (2 + 1) / (4 + 1) * (1 + 0) / (3 + 0)
    assert score.bleu4(cands, refs) == pytest.approx(math.exp(1 - 10 / 9) * p**0.25)
    assert score.bleu4([["x", "y"]], [["x", "y"]]) == 0.0  # no 3-/4-grams: no smoothing, as in sacrebleu


def test_rouge_l_by_hand():
    cand, ref = "the cat sat on the mat".split(), "the cat sat on a mat".split()
    assert score.rouge_l(cand, ref) == pytest.approx(5 / 6)  # LCS 5: P = R = 5/6
    # LCS 3, P = 1, R = 1/2: (1 + 1.44) * 0.5 / (0.5 + 1.44)
    assert score.rouge_l("a b c".split(), "a b c d e f".split()) == pytest.approx(2.44 * 0.5 / 1.94)
    assert score.rouge_l("a b c".split(), "a b c d e f".split(), beta=1.0) == pytest.approx(2 / 3)
    assert score.rouge_l([], ["a"]) == 0.0


def test_cider_d_by_hand():
    # N = 2 references, each unigram/bigram in one of them: idf = ln 2 for all (and for the unseen "e": df 0 -> 1).
    # pair 1 identical: n=1 and n=2 similarity 1, n=3,4 empty -> (1 + 1) / 4 * 10 = 5.
    # pair 2 "c e" vs "c d": unigram cosine 1/2, bigram 0 -> 0.5 / 4 * 10 = 1.25 (same length: no penalty).
    assert score.cider_d([["a", "b"], ["c", "e"]], [["a", "b"], ["c", "d"]]) == pytest.approx([5.0, 1.25])
    # Gaussian length penalty: one token longer than the reference multiplies by exp(-1 / 72)
    long = score.cider_d([["a", "b", "b"], ["c", "d"]], [["a", "b"], ["c", "d"]])[0]
    tf_b = 2 * math.log(2)  # clipped to the reference's ln 2 in the dot product
    cos1 = (math.log(2) ** 2 * 2) / (math.sqrt(math.log(2) ** 2 + tf_b**2) * math.sqrt(2) * math.log(2))
    cos2 = (math.log(2) ** 2) / (math.sqrt(2) * math.log(2) * math.log(2))
    assert long == pytest.approx((cos1 + cos2) / 4 * 10 * math.exp(-1 / 72))


def _references():
    rows = [  # ID, type, category, output, country, season
        (1, "binary", "presence", "yes", "Austria", "Summer"),
        (2, "binary", "area", "no", "Austria", "Winter"),
        (3, "mcq", "country", "d", "Portugal", "Summer"),
        (4, "mcq", "presence", "b", "Portugal", "Summer"),
        (5, "bounding box", "point", "[0.0 0.0, 0.5 0.5]", "Austria", "Summer"),
        (6, "bounding box", "reference", "[0.0 0.0, 1.0 1.0]", "Portugal", "Winter"),
        (7, "captioning", "None", "a forest near a lake", "Austria", "Summer"),
    ]
    names = ["ID", "type", "category", "output", "country", "season"]
    return pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})


def test_score_groups_by_type_category_country_season():
    predictions = {1: "Yes.", 2: "yes", 3: "(d)", 4: "a", 5: "[0.25 0.25, 0.75 0.75]", 6: "no box", 7: "a forest near a lake"}
    report = score.score(predictions, _references())
    table = {(r["group"], r["value"]): r for r in report.table}
    assert table["type", "binary"]["accuracy"] == 0.5 and table["type", "mcq"]["accuracy"] == 0.5
    boxes = table["type", "bounding box"]
    assert boxes["iou"] == pytest.approx((1 / 7 + 0.0) / 2) and boxes["acc@0.5"] == 0.0 and boxes["accuracy"] == 0.0
    caption = table["type", "captioning"]
    assert caption["bleu4"] == pytest.approx(1.0) and caption["rouge_l"] == pytest.approx(1.0) and caption["n"] == 1
    assert table["all", "all"]["accuracy"] == pytest.approx(2 / 6)  # 2 of the 6 judged (non-caption) rows
    assert table["category", "presence"]["accuracy"] == 0.5  # binary 1 right, mcq 4 wrong
    assert table["country", "Portugal"]["n"] == 3 and table["country", "Portugal"]["accuracy"] == pytest.approx(1 / 3)
    assert table["season", "Winter"]["accuracy"] == 0.0
    assert report.missing == 0
    text = report.format()
    assert text.splitlines()[0].split() == [
        "group", "value", "n", "accuracy", "iou", "acc@0.5", "bleu4", "rouge_l", "cider_d", "missing",
    ]


def test_missing_and_unknown_predictions():
    report = score.score({1: "yes"}, _references())
    assert report.missing == 6
    table = {(r["group"], r["value"]): r for r in report.table}
    assert table["type", "binary"]["accuracy"] == 0.5 and table["type", "binary"]["missing"] == 1
    assert table["type", "captioning"]["bleu4"] == 0.0
    with pytest.raises(score.ScoreError, match=r"2 predicted IDs are not annotations of the scored selection \(8, 9\)"):
        score.score({1: "yes", 8: "no", 9: "no"}, _references())


def test_prediction_files(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"ID": 1, "prediction": "yes"}\n{"ID": 2, "prediction": null}\n')
    assert score.read_predictions(str(tmp_path / "p.jsonl")) == {1: "yes", 2: ""}
    (tmp_path / "p.csv").write_text("ID,prediction\n3,\"[0.0 0.1, 0.2 0.3]\"\n4,007\n")
    assert score.read_predictions(str(tmp_path / "p.csv")) == {3: "[0.0 0.1, 0.2 0.3]", 4: "007"}  # text kept as text
    pq.write_table(pa.table({"ID": [5, 5], "prediction": ["a", "b"]}), tmp_path / "p.parquet")
    with pytest.raises(score.ScoreError, match="p.parquet: ID 5 has more than one prediction"):
        score.read_predictions(str(tmp_path / "p.parquet"))
    (tmp_path / "q.csv").write_text("id,answer\n1,yes\n")
    with pytest.raises(score.ScoreError, match=r"q.csv: needs the columns \['ID', 'prediction'\], has \['id', 'answer'\]"):
        score.read_predictions(str(tmp_path / "q.csv"))


def test_cli_scores_the_bench_split(fixture_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))  # never ~/.cache/matplotlib
    refs = score.read_references(str(fixture_data.parquet), cfg.resolve_config("s1s2-all").selection("bench"))
    ids, types, outputs = (refs[c].to_pylist() for c in ("ID", "type", "output"))
    wrong = {i for i, t in zip(ids, types) if t == "binary"}  # every binary answer flipped, the rest exact
    flip = {"yes": "no", "no": "yes"}
    with open(tmp_path / "preds.jsonl", "w") as f:
        f.writelines(json.dumps({"ID": i, "prediction": flip[o] if i in wrong else o}) + "\n" for i, o in zip(ids, outputs))
    rc = main(["score", str(tmp_path / "preds.jsonl"), "--data-dir", str(fixture_data.root), "--split", "bench",
               "--json", str(tmp_path / "out" / "s.json"), "--plot", str(tmp_path / "out" / "s.png"), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"{len(ids)} predictions scored against {len(ids)} annotations of split bench" in out
    table = {(r["group"], r["value"]): r for r in json.loads((tmp_path / "out" / "s.json").read_text())["table"]}
    assert table["type", "binary"]["accuracy"] == 0.0 and table["type", "mcq"]["accuracy"] == 1.0
    assert table["type", "bounding box"]["iou"] == 1.0 and table["type", "bounding box"]["acc@0.5"] == 1.0
    assert table["all", "all"]["n"] == len(ids) == refs.num_rows
    assert (tmp_path / "out" / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (tmp_path / "bad.jsonl").write_text('{"ID": 999999, "prediction": "yes"}\n')
    rc = main(["score", str(tmp_path / "bad.jsonl"), "--data-dir", str(fixture_data.root), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and "1 predicted IDs are not annotations of the scored selection (999999)" in err
