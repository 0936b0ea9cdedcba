"""Benchmark: does the ranker learn from its reader? Simulated readers over the hand-labelled set.

    pip install -e '.[bench]'; python bench/learning.py [--split tune|heldout|all] [--json]

Each profile of bench/data/relevance_labels.json becomes a reader of the 211 sample
papers, twice: the papers are split in two halves with as many relevant papers each; the reader
browses one half and the other is the test set, then the other way round. The reader is shown
their top 10 of the browsed half (the default configuration: int8 MiniLM fused with the lexical
score, as ``newsletter digest`` ranks), rates every paper shown, in order — "more like this" when
the profile grades it 1 or 2, "less like this" when 0 — and is then shown the next 10 (a paper
shown once is never shown again, as in the product), and so on. One reader per ranker:

- **Rocchio**: every click becomes an example paper (words and vector added to or taken from the
  profile), as before ``score.learn`` existed;
- **Rocchio, likes only**: the ablation, Rocchio fed only the "more like this" clicks;
- **Rocchio + learner**: what ships (``plan.rank_learned``, the function ``newsletter digest``
  calls): from 10 ratings both ways, the subscriber's logistic regression re-orders a pool of 50
  picks, and their "less like this" clicks go to the model instead of Rocchio.

After 0, 5, 10, 20, 30 and 50 clicks each ranker is scored with nDCG@10 over the test half (papers
never shown to any reader, so no rated paper is ever counted; graded as in bench/relevance.py),
averaged over both halves and over the profiles. Also printed: how many relevant papers the reader
was shown so far (the "more" clicks), what the reader experienced.

``--lexical-feature`` adds a reader whose model also takes the paper's lexical score (BM25 of the
stated interests, z-scored over the 211 papers) as a 385th feature — the variant ``score.learn``'s
docstring says was measured and not kept. Tuning (``--l2``, ``--max-weight``, ``--full-at``)
looks at ``--split tune`` only; the held-out split is reported, never tuned on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from relevance import KINDS, K, Labelled, cached_embeddings, models, ndcg  # noqa: E402 - the sibling benchmark's set

from newsletter import plan  # noqa: E402
from newsletter.plan import rank_learned  # noqa: E402
from newsletter.records import Example, Profile  # noqa: E402
from newsletter.score import PaperIndex, learn, rank_papers  # noqa: E402
from newsletter.score import semantic as sem  # noqa: E402
from newsletter.score.lexical import select_top  # noqa: E402

CHECKPOINTS = (0, 5, 10, 20, 30, 50)  # clicks
Ranker = Callable[[int, list[tuple[int, bool]], set[int]], list[int]]  # (profile, ratings, hidden rows) → top rows


class Simulation:
    """The labelled set, its stored vectors, and the rankers as the product runs them."""

    def __init__(self, data: Labelled) -> None:
        self.data = data
        model = models()["int8"]
        self.semantic = sem.SemanticModel(model)
        self.vectors = cached_embeddings(model, "papers|" + "|".join(data.texts), lambda: self.semantic.embed_papers(data.papers))
        self.by_key = {paper.key: vector for paper, vector in zip(data.papers, self.vectors, strict=True)}
        self.base = data.ours()
        texts = sorted({t for p in self.base for t in sem.interest_texts(p.preferences)})
        embedded = cached_embeddings(model, "interests|" + "|".join(texts), lambda: self.semantic.embed(texts))
        self.interests = dict(zip(texts, embedded, strict=True))
        self.index = PaperIndex.build(data.papers)
        self.row = {paper.key: i for i, paper in enumerate(data.papers)}
        self._lexical: dict[int, np.ndarray] = {}

    def profile(self, i: int, ratings: list[tuple[int, bool]], hidden: set[int]) -> Profile:
        """Profile i with its ratings as examples and the ``hidden`` rows as already sent."""
        base = self.base[i]
        rated = tuple(Example(self.data.papers[r], 1.0 if liked else -plan.DISLIKE_WEIGHT, "liked" if liked else "disliked")
                      for r, liked in ratings)
        return dataclasses.replace(base, examples=base.examples + rated,
                                   already_sent=frozenset(self.data.papers[r].key for r in hidden))

    def similarity(self, profile: Profile) -> np.ndarray:
        """What ``plan.embed_for_ranking`` computes for one profile."""
        examples = [[(self.by_key[e.paper.key], e.weight) for e in profile.examples]]
        return sem.similarity(sem.profile_vectors([profile.preferences], self.interests, examples), self.vectors)

    def rocchio(self, i: int, ratings: list[tuple[int, bool]], hidden: set[int]) -> list[int]:
        profile = self.profile(i, ratings, hidden)
        [picks] = rank_papers(self.index, [profile], min_score=0.0, semantic=self.similarity(profile))
        return [self.row[p.paper.key] for p in picks]

    def learner(self, i: int, ratings: list[tuple[int, bool]], hidden: set[int]) -> list[int]:
        profile = self.profile(i, ratings, hidden)
        [picks] = rank_learned(self.index, [profile], similarity=self.similarities, vectors=self.by_key, min_score=0.0)
        return [self.row[p.paper.key] for p in picks]

    def similarities(self, profiles: Sequence[Profile]) -> np.ndarray:
        return np.vstack([self.similarity(p) for p in profiles])

    def rocchio_likes_only(self, i: int, ratings: list[tuple[int, bool]], hidden: set[int]) -> list[int]:
        """The ablation: Rocchio fed only the "more like this" clicks (what the learner's subscribers get), no model."""
        return self.rocchio(i, [(r, liked) for r, liked in ratings if liked], hidden)

    def lexical(self, i: int) -> np.ndarray:
        """Profile i's lexical score of every paper from its stated interests only, z-scored (0 where not scored)."""
        if i not in self._lexical:
            prefs = dataclasses.replace(self.base[i].preferences, exclude=(), categories=(), min_score=None)
            profile = Profile(i, "", prefs, len(self.data.papers))
            top = select_top(self.index, [profile], min_score=-np.inf)
            scores = np.full(len(self.data.papers), np.nan)
            valid = top.rows[0] >= 0
            scores[top.rows[0][valid]] = top.scores[0][valid]
            scores = np.nan_to_num(learn.zscore(np.nan_to_num(scores, nan=float(np.nanmean(scores)))))
            self._lexical[i] = scores
        return self._lexical[i]

    def learner_with_lexical(self, i: int, ratings: list[tuple[int, bool]], hidden: set[int]) -> list[int]:
        """``rank_learned`` with the lexical score as a 385th feature of the model (the variant not kept)."""
        profile = self.profile(i, ratings, hidden)
        features = np.hstack([self.vectors, self.lexical(i)[:, None]])
        by_key = {paper.key: row for paper, row in zip(self.data.papers, features, strict=True)}
        models, asked = learn.prepare([profile], by_key)
        ranked = rank_papers(self.index, asked, min_score=0.0, semantic=self.similarities(asked))
        [picks] = learn.apply(ranked, [profile], models, keys=[p.key for p in self.data.papers], candidates=features,
                              boost=self.index.boost)
        return [self.row[p.paper.key] for p in picks]


class Reader:
    """One simulated reader: rates every paper shown, in order; asks for the next 10 when done.

    ``unseen``: rows never shown to them (the test half), hidden from their digests like papers already sent.
    """

    def __init__(self, sim: Simulation, i: int, rank: Ranker, unseen: set[int]) -> None:
        self.sim, self.i, self.rank, self.unseen = sim, i, rank, unseen
        self.ratings: list[tuple[int, bool]] = []
        self.queue: list[int] = []
        self.exhausted = False

    def click_until(self, clicks: int) -> None:
        while len(self.ratings) < clicks and not self.exhausted:
            if not self.queue:
                self.queue = self.rank(self.i, self.ratings, self.unseen | {r for r, _ in self.ratings})
                if not self.queue:
                    self.exhausted = True
                    break
            row = self.queue.pop(0)
            self.ratings.append((row, self.sim.data.grades[self.i].get(row, 0) >= 1))


def halves(sim: Simulation, i: int) -> tuple[set[int], set[int]]:
    """Profile i's papers in two halves with as many relevant papers each (alternating down the grades, random ties)."""
    rng = np.random.default_rng(i)
    grades = sim.data.grades[i]
    rows = sorted(range(len(sim.data.papers)), key=lambda r: (-grades.get(r, 0), rng.random()))
    return set(rows[0::2]), set(rows[1::2])


def simulate(sim: Simulation, i: int, arms: dict[str, Ranker]) -> dict[str, dict[int, tuple[float, float | None]]]:
    """Profile i's readers, twice (each half of the papers browsed in turn, the other half tested): arm →
    checkpoint → (mean nDCG@10 over the test halves, relevant papers among those shown so far)."""
    found: dict[str, dict[int, list[tuple[float, float | None]]]] = {name: {c: [] for c in CHECKPOINTS} for name in arms}
    for browsed, tested in (halves(sim, i), halves(sim, i)[::-1]):
        grades = {r: g for r, g in sim.data.grades[i].items() if r in tested}
        readers = {name: Reader(sim, i, rank, unseen=tested) for name, rank in arms.items()}
        for clicks in CHECKPOINTS:
            for name, reader in readers.items():
                reader.click_until(clicks)
                score = ndcg(arms[name](i, reader.ratings, browsed)[:K], grades)
                shown = float(sum(liked for _, liked in reader.ratings)) if reader.ratings else None
                found[name][clicks].append((score, shown))
    return {name: {c: (float(np.mean([s for s, _ in runs])),
                       None if runs[0][1] is None else float(np.mean([v for _, v in runs if v is not None])))
                   for c, runs in by_click.items()} for name, by_click in found.items()}


def summary(runs: dict[int, dict[str, dict[int, tuple[float, float | None]]]],
            members: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    """arm → checkpoint → {ndcg, relevant_shown}: means over ``members``."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for name in runs[members[0]]:
        out[name] = {}
        for clicks in CHECKPOINTS:
            shown = [s for i in members if (s := runs[i][name][clicks][1]) is not None]
            out[name][clicks] = {"ndcg": float(np.mean([runs[i][name][clicks][0] for i in members])),
                                 "relevant_shown": float(np.mean(shown)) if shown else float("nan")}
    return out


def show(title: str, results: dict[str, dict[int, dict[str, float]]]) -> None:
    print(f"\n{title} — nDCG@10 on the half of the papers never shown (relevant papers among those shown so far)")
    print(f"{'clicks':<28}" + "".join(f"{c:>16}" for c in CHECKPOINTS))
    for name, row in results.items():
        print(f"{name:<28}" + "".join(f"{row[c]['ndcg']:>8.3f} ({row[c]['relevant_shown']:>4.1f})" for c in CHECKPOINTS))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("tune", "heldout", "all"), default=None,
                        help="only this split (default: the whole set, then the held-out split)")
    parser.add_argument("--lexical-feature", action="store_true", help="also the learner with the lexical score as a feature")
    parser.add_argument("--l2", type=float, default=learn.L2)
    parser.add_argument("--max-weight", type=float, default=learn.MAX_WEIGHT)
    parser.add_argument("--full-at", type=int, default=learn.FULL_WEIGHT_RATINGS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    learn.L2, learn.MAX_WEIGHT, learn.FULL_WEIGHT_RATINGS = args.l2, args.max_weight, args.full_at
    sim = Simulation(Labelled())
    arms: dict[str, Ranker] = {"Rocchio": sim.rocchio, "Rocchio, likes only": sim.rocchio_likes_only,
                               "Rocchio + learner": sim.learner}
    if args.lexical_feature:
        arms["+ learner, lexical feature"] = sim.learner_with_lexical
    splits = {"all": "whole set", "heldout": "held-out split", "tune": "tuning split"}
    chosen = [args.split] if args.split else ["all", "heldout"]
    profiles = sim.data.profiles
    members = {s: [i for i, p in enumerate(profiles) if s == "all" or p["split"] == s] for s in chosen}
    runs = {i: simulate(sim, i, arms) for i in sorted({i for m in members.values() for i in m})}
    results = {s: summary(runs, members[s]) for s in chosen}
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print(f"kinds: {', '.join(KINDS)}; L2 {args.l2}, max weight {args.max_weight}, full weight at {args.full_at} ratings, "
          f"pool {learn.POOL}, model from {learn.MIN_RATINGS} ratings")
    for split in chosen:
        show(splits[split], results[split])


if __name__ == "__main__":
    main()
