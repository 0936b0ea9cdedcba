"""Stored embeddings: a paper is embedded once, again only when its text changes; an interest once per wording."""

from __future__ import annotations

import datetime as dt
import json
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


def test_ingest_embeds_the_new_papers_so_that_planning_finds_them_stored(cli, configured, monkeypatch) -> None:
    """Embedding a day's listing is minutes of CPU: it happens at ingest, not while the morning's digests
    wait; and a dry run keeps the interest vectors it had to embed, so the next one (and the plan) reuse them."""
    from newsletter.db.engine import make_engine, make_sessionmaker
    from newsletter.runtime import Runtime

    monkeypatch.delenv("NEWSLETTER_SEMANTIC")  # the suite's default is off; the product's is on
    model = CountingModel()
    monkeypatch.setattr(Runtime, "semantic_model", lambda self: model)
    cli("init")
    ingested = cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"))
    assert ingested.code == 0, ingested.err
    papers = len(model.embedded)
    assert papers == 60 and "embedded 60 new papers for the semantic ranker" in ingested.out
    again = cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"))  # nothing new: nothing embedded, nothing said
    assert again.code == 0 and len(model.embedded) == papers and "embedded" not in again.out

    cli("subscribers", "add", "ada@example.org", "--topic", "sequential recommendation", "--max-papers", "5")
    dry = cli("digest", "--dry-run", "--json")
    assert dry.code == 0, dry.err
    assert json.loads(dry.out)[0]["papers"]  # the ingested papers were candidates
    assert model.embedded[papers:] == ["sequential recommendation"]  # only the interest, never a paper again
    cli("digest", "--dry-run", "--json")
    sent = cli("digest")
    assert sent.code == 0, sent.err
    assert model.embedded[papers:] == ["sequential recommendation"]  # kept by the first dry run
    with make_sessionmaker(make_engine(configured))() as session:
        assert session.scalar(select(func.count()).select_from(PaperEmbedding)) == 60
        assert session.scalar(select(func.count()).select_from(InterestEmbedding)) == 1


def test_the_daemons_ingest_job_embeds_what_it_stored_and_logs_it(configured, monkeypatch, caplog) -> None:
    import logging

    from newsletter.jobs import ingest_configured
    from newsletter.runtime import Runtime
    from newsletter.settings import load_settings

    monkeypatch.delenv("NEWSLETTER_SEMANTIC")
    monkeypatch.setenv("NEWSLETTER_SOURCES", f'["{FIXTURES / "arxiv_cs_lg.rss"}"]')
    model = CountingModel()
    monkeypatch.setattr(Runtime, "semantic_model", lambda self: model)
    runtime = Runtime.build(load_settings())
    from newsletter.db import migrate

    migrate.upgrade(runtime.engine)
    with caplog.at_level(logging.INFO, logger="newsletter.daemon"):
        [report] = ingest_configured(runtime, trending=False, job="ingest")
    assert report.new == 60 and len(model.embedded) == 60
    assert "ingest: embedded 60 new papers for the semantic ranker" in caplog.text
    with runtime.sessions() as session:
        assert session.scalar(select(func.count()).select_from(PaperEmbedding)) == 60


class BrokenModel(CountingModel):
    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise RuntimeError("model.safetensors: truncated file")


def test_a_model_that_fails_at_ingest_loses_no_paper_and_planning_embeds_them_later(cli, configured, monkeypatch, caplog) -> None:
    from newsletter.runtime import Runtime

    monkeypatch.delenv("NEWSLETTER_SEMANTIC")
    broken = BrokenModel()
    monkeypatch.setattr(Runtime, "semantic_model", lambda self: broken)
    cli("init")
    ingested = cli("ingest", str(FIXTURES / "arxiv_cs_lg.rss"))
    assert ingested.code == 0, ingested.err
    assert "could not embed the new papers for the semantic ranker (RuntimeError: model.safetensors: truncated file)" in caplog.text
    working = CountingModel()
    monkeypatch.setattr(Runtime, "semantic_model", lambda self: working)
    cli("subscribers", "add", "ada@example.org", "--topic", "sequential recommendation", "--max-papers", "5")
    dry = cli("digest", "--dry-run", "--json")
    assert dry.code == 0 and json.loads(dry.out)[0]["papers"], dry.err
    assert len(working.embedded) == 61  # the 60 papers the ingest could not embed, and the topic
