"""Stored embeddings: a paper is embedded once, again only when its text changes; an interest once per wording."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from sqlalchemy import func, select

from newsletter.db import embeddings, repo
from newsletter.db.embeddings import InterestEmbedding, PaperEmbedding
from newsletter.ingest.feeds import parse_feed
from newsletter.records import Paper
from tests.conftest import FIXTURES

NOW = dt.datetime(2026, 11, 23, 6, 0)


class CountingModel:
    """Stands in for score.semantic.SemanticModel: a vector from each text's hash, and a count of calls."""

    name = "counting"

    def __init__(self) -> None:
        self.embedded: list[str] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded += list(texts)
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(384).astype(np.float32) for t in texts])

    def embed_papers(self, papers: Sequence[Paper]) -> np.ndarray:
        return self.embed([embeddings.paper_text(p) for p in papers])


def stored_papers(session, count: int = 3) -> list[Paper]:
    papers = parse_feed((FIXTURES / "arxiv_cs_lg.rss").read_bytes(), source="t").papers[:count]
    repo.upsert_papers(session, papers=papers, source_id=None, now=NOW)
    session.flush()
    return repo.papers_first_seen_between(session, start=NOW, end=NOW + dt.timedelta(seconds=1))


def test_a_paper_is_embedded_once_and_read_back_bit_for_bit(sessions) -> None:
    model = CountingModel()
    with sessions() as session:
        papers = stored_papers(session)
        first = embeddings.embed_papers(session, model=model, papers=papers)
        session.commit()
        again = embeddings.embed_papers(session, model=model, papers=papers)
        assert len(model.embedded) == 3
        assert again.dtype == np.float32 and np.array_equal(first, again)
        assert session.scalar(select(func.count()).select_from(PaperEmbedding)) == 3


def test_a_new_abstract_is_embedded_again_and_replaces_the_old_vector(sessions) -> None:
    model = CountingModel()
    with sessions() as session:
        [paper] = stored_papers(session, 1)
        [old] = embeddings.embed_papers(session, model=model, papers=[paper])
        [new] = embeddings.embed_papers(session, model=model, papers=[replace(paper, abstract="A different abstract.")])
        session.commit()
        assert len(model.embedded) == 2 and not np.array_equal(old, new)
        [row] = session.scalars(select(PaperEmbedding)).all()
        assert np.array_equal(np.frombuffer(row.vector, dtype=np.float32), new)


def test_vectors_of_two_models_are_kept_apart(sessions) -> None:
    first, second = CountingModel(), CountingModel()
    second.name = "other"
    with sessions() as session:
        papers = stored_papers(session, 2)
        embeddings.embed_papers(session, model=first, papers=papers)
        embeddings.embed_papers(session, model=second, papers=papers)
        assert len(first.embedded) == len(second.embedded) == 2
        assert session.scalar(select(func.count()).select_from(PaperEmbedding)) == 4


def test_storing_what_another_planner_stored_first_is_not_an_error(sessions) -> None:
    model = CountingModel()
    with sessions() as session:
        [paper] = stored_papers(session, 1)
        vector = model.embed(["x"])[0]
        embeddings.store_interest_vectors(session, model="m", vectors={"graph neural networks": vector})
        embeddings.store_interest_vectors(session, model="m", vectors={"graph neural networks": vector})
        embeddings._insert_new(session, PaperEmbedding, [{"paper_id": paper.id, "model": "m", "text_hash": "h",
                                                          "vector": vector.tobytes(), "created_at": NOW}] * 2)
        session.commit()
        assert session.scalar(select(func.count()).select_from(InterestEmbedding)) == 1


def test_an_interest_is_embedded_once_per_wording_and_shared(sessions) -> None:
    model = CountingModel()
    with sessions() as session:
        first = embeddings.embed_interests(session, model=model, texts=["diffusion models", "sampling"])
        session.commit()
        second = embeddings.embed_interests(session, model=model, texts=["sampling", "diffusion models", "video"])
        assert model.embedded == ["diffusion models", "sampling", "video"]
        assert np.array_equal(first["sampling"], second["sampling"])


def test_deleting_a_paper_deletes_its_vectors(sessions) -> None:
    from newsletter.db.models import Paper as PaperRow

    with sessions() as session:
        [paper] = stored_papers(session, 1)
        embeddings.embed_papers(session, model=CountingModel(), papers=[paper])
        session.commit()
        session.delete(session.get(PaperRow, paper.id))
        session.commit()
        assert session.scalar(select(func.count()).select_from(PaperEmbedding)) == 0
