"""Score a model's answers on a split (``bench`` by default) of BigEarthNet.txt.

Predictions are a file (JSONL, CSV or Parquet) with one row per annotation:
``ID`` and ``prediction`` (the model's raw answer text). References come from
the annotation parquet (no imagery is read). Each row gets a score by its
``type``; results are averaged per type, category, country and season.

Definitions. The release's paper reports accuracy for yes/no and MCQ, a box
metric for referring and text-overlap scores for captions, but it does not fix
how raw model text is normalised, how boxes are parsed or which caption
toolkit/tokeniser is used. These are ours (README, "Scoring"):

- binary: the prediction, lower-cased with surrounding whitespace and a final
  ``.`` removed, must equal the reference ``yes``/``no``;
- mcq: the option letter is the first word of the prediction when it is a
  single ``a``-``d`` (case-insensitive, optionally as ``c)``, ``(c)`` or
  ``c.``); anything else is wrong;
- bounding box: the first ``[x0 y0, x1 y1]`` in the prediction, read with the
  release's number grammar (``bentxt.text.grammar``); IoU of the two boxes as areas in
  image fractions; accuracy = IoU >= 0.5. An unreadable box scores IoU 0;
- captioning: BLEU-4 (corpus level, Papineni et al. 2002, brevity penalty
  against the reference length), ROUGE-L (F with beta = 1.2, the
  coco-caption value) and CIDEr-D (coco-caption: n-grams 1-4, document
  frequencies over the references scored, Gaussian length penalty sigma 6,
  clipping, x10) on lower-cased word tokens (``\\w+`` joined across ``.``
  ``,`` ``'`` inside numbers/words, so "586,000" is one token), one reference
  per image. Implemented here, because pycocoevalcap needs Java for its
  tokeniser and no well-kept offline library computes CIDEr-D; BLEU and
  ROUGE-L are tested against sacrebleu and rouge-score.

An annotation of the split without a prediction counts as wrong (IoU 0, caption
scores of an empty text) and is reported as ``missing``; a prediction whose ID
is not in the split is an error (a wrong split or config, most likely).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from bentxt.text import grammar as text
from bentxt.errors import BigEarthNetTxtError

__all__ = [
    "ScoreError",
    "read_predictions",
    "read_references",
    "normalise_binary",
    "mcq_letter",
    "parse_box",
    "box_iou",
    "tokenize",
    "bleu4",
    "rouge_l",
    "cider_d",
    "score",
    "ScoreReport",
    "GROUP_COLUMNS",
]

#: the columns results are grouped by (besides the whole split)
GROUP_COLUMNS: Tuple[str, ...] = ("type", "category", "country", "season")
#: IoU a predicted box needs to count as correct
IOU_THRESHOLD = 0.5
PREDICTION_COLUMNS = ("ID", "prediction")


class ScoreError(BigEarthNetTxtError, ValueError):
    """A predictions file that cannot be scored: wrong columns, duplicate or unknown IDs."""


# ----------------------------------------------------------------------------- reading


def read_predictions(path: str) -> Dict[int, str]:
    """``{ID: prediction}`` from a ``.jsonl``/``.json`` (one object per line), ``.csv`` or ``.parquet`` file."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    lower = path.lower()
    try:
        if lower.endswith(".parquet"):
            table = pq.read_table(path)
        elif lower.endswith(".csv"):
            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types={"prediction": pa.string()}))
        elif lower.endswith((".jsonl", ".json")):
            table = pjson.read_json(path)
        else:
            raise ScoreError(f"{path}: predictions must be .jsonl, .csv or .parquet")
    except (pa.ArrowInvalid, OSError) as err:
        raise ScoreError(f"{path}: cannot read the predictions: {err}") from err
    missing = [c for c in PREDICTION_COLUMNS if c not in table.column_names]
    if missing:
        raise ScoreError(f"{path}: needs the columns {list(PREDICTION_COLUMNS)}, has {table.column_names} (missing {missing})")
    ids = table["ID"].to_pylist()
    predictions = table["prediction"].to_pylist()
    if any(i is None for i in ids):
        raise ScoreError(f"{path}: a row has no ID")
    out: Dict[int, str] = {}
    for i, p in zip(ids, predictions):
        i = int(i)
        if i in out:
            raise ScoreError(f"{path}: ID {i} has more than one prediction")
        out[i] = "" if p is None else str(p)
    return out


def read_references(parquet: str, selection) -> pa.Table:
    """The selected annotation rows with what scoring needs (ID, type, category, output, country, season)."""
    from bentxt.text import annotations as ann

    columns = ["ID", "type", "category", "output", "country", "season", "split"]
    table = ann.read_selection(parquet, selection, columns=columns)
    return table.select(columns)


# ----------------------------------------------------------------------------- per-row metrics


def normalise_binary(prediction: str) -> str:
    return prediction.strip().lower().removesuffix(".").strip()


_LETTER_RE = re.compile(r"^\s*\(?([a-dA-D])(?:\)|\.|:)?(?:\s|,|$)")


def mcq_letter(prediction: str) -> Optional[str]:
    """The option letter a prediction starts with (``c``, ``C``, ``c)``, ``(c)``, ``c.``), else None."""
    m = _LETTER_RE.match(prediction)
    return m[1].lower() if m else None


_N = text._NUM  # the release's number grammar
_BOX_SEARCH = re.compile(rf"\[{_N} {_N}, {_N} {_N}\]", re.ASCII)


def parse_box(prediction: str) -> Optional[Tuple[float, float, float, float]]:
    """The first ``[x0 y0, x1 y1]`` box in a prediction (release grammar), or None; corners are ordered."""
    m = _BOX_SEARCH.search(prediction)
    if m is None:
        return None
    x0, y0, x1, y1 = (float(v) for v in m.groups())
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes (areas in image fractions).

    Two identical zero-area boxes have IoU 1; a zero-area box and another box 0.
    """
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if union <= 0:
        return 1.0 if tuple(a) == tuple(b) else 0.0
    return inter / union


# ----------------------------------------------------------------------------- caption metrics

_TOKEN_RE = re.compile(r"\w+(?:[.,']\w+)*")


def tokenize(caption: str) -> List[str]:
    """Lower-cased word tokens; punctuation dropped, but "586,000" and "40.7" stay one token."""
    return _TOKEN_RE.findall(caption.lower())


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu4(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 with one reference per candidate: clipped n-gram precisions summed over the corpus,
    geometric mean, brevity penalty.

    0 when some n-gram order has no match (no smoothing), as in sacrebleu and coco-caption.
    """
    matches, totals = [0] * 4, [0] * 4
    cand_len = ref_len = 0
    for cand, ref in zip(candidates, references):
        cand_len += len(cand)
        ref_len += len(ref)
        for n in range(1, 5):
            c, r = _ngrams(cand, n), _ngrams(ref, n)
            matches[n - 1] += sum(min(k, r[g]) for g, k in c.items())
            totals[n - 1] += max(len(cand) - n + 1, 0)
    if cand_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / 4
    brevity = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / cand_len)
    return brevity * math.exp(log_precision)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: Sequence[str], reference: Sequence[str], beta: float = 1.2) -> float:
    """ROUGE-L F-measure of one caption: LCS-based recall R and precision P, ``(1 + b^2) P R / (R + b^2 P)``."""
    if not candidate or not reference:
        return 0.0
    lcs = _lcs(candidate, reference)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(candidate), lcs / len(reference)
    return (1 + beta**2) * p * r / (r + beta**2 * p)


def cider_d(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[str]], sigma: float = 6.0) -> List[float]:
    """CIDEr-D per caption (coco-caption's definition, one reference each); the corpus score is their mean.

    For n = 1..4: TF-IDF vectors (term frequency x log(N / document
    frequency), document frequency over the N references); the candidate's
    counts are clipped to the reference's; similarity = clipped dot product /
    (|c| |r|) x exp(-(len c - len r)^2 / (2 sigma^2)); averaged over n, x 10.
    """
    n_docs = len(references)
    if n_docs == 0:
        return []
    doc_freq: List[Counter[tuple]] = [Counter() for _ in range(4)]
    for ref in references:
        for n in range(4):
            doc_freq[n].update(_ngrams(ref, n + 1).keys())
    log_n = math.log(float(n_docs))

    def vectors(tokens: Sequence[str]) -> List[Dict[tuple, float]]:
        return [{g: tf * (log_n - math.log(max(1.0, doc_freq[n][g]))) for g, tf in _ngrams(tokens, n + 1).items()}
                for n in range(4)]

    scores = []
    for cand, ref in zip(candidates, references):
        vc, vr = vectors(cand), vectors(ref)
        delta = len(cand) - len(ref)
        total = 0.0
        for n in range(4):
            norm_c = math.sqrt(sum(v * v for v in vc[n].values()))
            norm_r = math.sqrt(sum(v * v for v in vr[n].values()))
            dot = sum(min(v, vr[n][g]) * vr[n][g] for g, v in vc[n].items() if g in vr[n])
            if norm_c and norm_r:
                total += dot / (norm_c * norm_r) * math.exp(-(delta**2) / (2 * sigma**2))
        scores.append(total / 4 * 10.0)
    return scores


# ----------------------------------------------------------------------------- scoring a split


@dataclass
class ScoreReport:
    """Per-row scores and their grouped averages.

    ``rows``: one dict per reference annotation (ID, the group columns,
    ``correct`` for binary/MCQ/boxes, ``iou`` for boxes, caption scores,
    ``missing``). ``table``: one dict per group (``group``, ``value``, ``n``
    and the metrics that apply), the whole split first.
    """

    rows: List[dict]
    table: List[dict]
    missing: int

    def to_json(self) -> str:
        return json.dumps({"missing": self.missing, "table": self.table}, indent=2, allow_nan=False, default=_json_value)

    def format(self, markdown: bool = False) -> str:
        """The table as aligned text (or markdown): one row per group, the metrics as columns."""
        header = ["group", "value", "n"] + [m for m in METRICS if any(m in r for r in self.table)]
        lines = [[str(r.get(h, "")) if h in ("group", "value", "n") else _fmt(r.get(h)) for h in header] for r in self.table]
        if markdown:
            out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
            out += ["| " + " | ".join(line) + " |" for line in lines]
            return "\n".join(out)
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        rows = [header] + lines
        return "\n".join("  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths)))
                         for row in rows)

    def plot(self, path: str, metric: str = "accuracy") -> str:
        """A bar chart of ``metric`` per category, country and season (matplotlib, Agg backend: no display needed)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as err:
            raise ImportError("the score plot needs matplotlib: pip install 'bigearthnet-txt[plot]'") from err
        groups = [g for g in GROUP_COLUMNS[1:] if any(r["group"] == g and metric in r for r in self.table)]
        if not groups:
            metrics = sorted({m for r in self.table for m in r if m in METRICS})
            raise ScoreError(f"no group has the metric {metric!r}; metrics: {metrics}")
        fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 4), squeeze=False)
        for ax, group in zip(axes[0], groups):
            rows = [r for r in self.table if r["group"] == group and metric in r]
            ax.barh([str(r["value"]) for r in rows], [r[metric] for r in rows], color="tab:blue")
            ax.set_title(f"{metric} by {group}")
            ax.set_xlim(0, 1 if metric in ("accuracy", "iou", "acc@0.5") else None)
            for k, r in enumerate(rows):
                ax.text(r[metric], k, f" {r[metric]:.3f} (n={r['n']})", va="center", fontsize=7)
        fig.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


#: metric columns of the table, in this order
METRICS: Tuple[str, ...] = ("accuracy", "iou", "acc@0.5", "bleu4", "rouge_l", "cider_d", "missing")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _json_value(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(type(value))


def _row_scores(kind: str, prediction: Optional[str], reference: str, id_: int) -> dict:
    """Scores of one non-caption row (captions are scored as a corpus)."""
    given = prediction if prediction is not None else ""
    if kind == "binary":
        return {"correct": normalise_binary(given) == reference}
    if kind == "mcq":
        return {"correct": mcq_letter(given) == reference}
    if kind == "bounding box":
        box = parse_box(given)
        iou = box_iou(box, text.parse_bbox(reference, id_)) if box is not None else 0.0
        return {"iou": iou, "correct": iou >= IOU_THRESHOLD}
    return {}


def score(predictions: Mapping[int, str], references: pa.Table) -> ScoreReport:
    """Score predictions (``{ID: text}``) against reference rows (:func:`read_references`)."""
    refs = {c: references[c].to_pylist() for c in ("ID", "type", "category", "output", "country", "season")}
    known = set(refs["ID"])
    unknown = [i for i in predictions if i not in known]
    if unknown:
        shown = ", ".join(str(i) for i in sorted(unknown)[:5]) + (", ..." if len(unknown) > 5 else "")
        raise ScoreError(
            f"{len(unknown)} predicted IDs are not annotations of the scored selection ({shown}); "
            "check --split and the config's task and filters"
        )
    rows = []
    captions: List[int] = []
    for k, id_ in enumerate(refs["ID"]):
        prediction = predictions.get(id_)
        row = {"ID": id_, **{c: refs[c][k] for c in GROUP_COLUMNS}, "missing": prediction is None}
        row.update(_row_scores(refs["type"][k], prediction, refs["output"][k], id_))
        if refs["type"][k] == "captioning":
            captions.append(k)
        rows.append(row)
    if captions:
        cands = [tokenize(predictions.get(refs["ID"][k]) or "") for k in captions]
        gts = [tokenize(refs["output"][k]) for k in captions]
        ciders = cider_d(cands, gts)
        for k, c, g, cider in zip(captions, cands, gts, ciders):
            rows[k].update(rouge_l=rouge_l(c, g), cider_d=cider, _tokens=(c, g))
    return ScoreReport(rows, _table(rows), sum(r["missing"] for r in rows))


def _summary(rows: List[dict]) -> dict:
    out: dict = {"n": len(rows)}
    judged = [r["correct"] for r in rows if "correct" in r]
    if judged:
        out["accuracy"] = float(np.mean(judged))
    ious = [r["iou"] for r in rows if "iou" in r]
    if ious:
        out["iou"] = float(np.mean(ious))
        out["acc@0.5"] = float(np.mean([v >= IOU_THRESHOLD for v in ious]))
    caps = [r for r in rows if "_tokens" in r]
    if caps:
        out["bleu4"] = bleu4([r["_tokens"][0] for r in caps], [r["_tokens"][1] for r in caps])
        out["rouge_l"] = float(np.mean([r["rouge_l"] for r in caps]))
        out["cider_d"] = float(np.mean([r["cider_d"] for r in caps]))
    out["missing"] = sum(r["missing"] for r in rows)
    return out


def _table(rows: List[dict]) -> List[dict]:
    """Whole split, then per type, category, country and season (groups sorted by value).

    Caption scores of a group use the CIDEr-D document frequencies of the whole
    split (a group's own references would change the IDF), and corpus BLEU-4
    over the group's captions.
    """
    table = [{"group": "all", "value": "all", **_summary(rows)}]
    for column in GROUP_COLUMNS:
        values = sorted({r[column] for r in rows})
        for value in values:
            part = [r for r in rows if r[column] == value]
            table.append({"group": column, "value": value, **_summary(part)})
    return table


def iter_rows(report: ScoreReport) -> Iterable[dict]:
    """Per-row scores without internal fields (for writing them out)."""
    for r in report.rows:
        yield {k: v for k, v in r.items() if not k.startswith("_")}
