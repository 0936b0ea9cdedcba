"""Stored sentence embeddings: each paper's once, each interest's once per wording.

Vectors are float32 bytes (384 × 4 = 1,536 B), keyed by the model that made them (the int8 and
float32 weights give slightly different vectors; never mix them). A paper's row also keeps a hash
of the text it was made from, so a new version with a new abstract is embedded again. Interests
(a topic phrase, a key phrase of a sentence) are keyed by a hash of their text: a subscriber who
changes their preferences costs only the new wordings, and subscribers who share a topic share its
vector. Writes never fail on a row another process wrote first (INSERT … ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

import numpy as np
from sqlalchemy import ForeignKey, LargeBinary, String, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column

from newsletter.db.models import Base, utcnow
from newsletter.records import Paper

IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's 32,766 bound parameters
INTEREST_CHUNK = 5_000  # text hashes per IN (...) list: a dry run of 100,000 subscribers looks up ~70,000
MODEL_NAME_CHARS = 64


class PaperEmbedding(Base):
    __tablename__ = "paper_embeddings"

    paper_id: Mapped[int] = mapped_column(ForeignKey("papers.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(MODEL_NAME_CHARS), primary_key=True)
    text_hash: Mapped[str] = mapped_column(String(64))  # sha256 of title + abstract as embedded
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class InterestEmbedding(Base):
    __tablename__ = "interest_embeddings"

    text_hash: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the interest's text
    model: Mapped[str] = mapped_column(String(MODEL_NAME_CHARS), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Embedder(Protocol):
    """What these functions ask of ``score.semantic.SemanticModel``."""

    @property
    def name(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_papers(self, papers: Sequence[Paper]) -> np.ndarray: ...


def embed_papers(session: Session, *, model: Embedder, papers: Sequence[Paper]) -> np.ndarray:
    """papers × 384: stored vectors where their text is unchanged, the others embedded now and stored."""
    texts = {p.id: paper_text(p) for p in papers if p.id is not None}
    stored = paper_vectors(session, model=model.name, papers=texts)
    missing = [p for p in papers if p.id not in stored]
    fresh = model.embed_papers(missing) if missing else np.zeros((0, 384), dtype=np.float32)
    store_paper_vectors(session, model=model.name, papers=texts,
                        vectors={p.id: v for p, v in zip(missing, fresh, strict=True) if p.id is not None})
    computed = {id(p): v for p, v in zip(missing, fresh, strict=True)}
    rows = [stored[p.id] if p.id in stored else computed[id(p)] for p in papers]
    return np.stack(rows) if rows else np.zeros((0, 384), dtype=np.float32)


def embed_interests(session: Session, *, model: Embedder, texts: Iterable[str]) -> dict[str, np.ndarray]:
    """Interest text → vector: stored ones, the others embedded now and stored."""
    wanted = sorted(set(texts))
    found = interest_vectors(session, model=model.name, texts=wanted)
    missing = [t for t in wanted if t not in found]
    if missing:
        fresh = dict(zip(missing, model.embed(missing), strict=True))
        store_interest_vectors(session, model=model.name, vectors=fresh)
        found.update(fresh)
    return found


def paper_text(paper: Paper) -> str:
    """What a paper's vector is made from; a new version that changes it is embedded again."""
    return f"{paper.title}\n{paper.abstract}"


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _vector(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float32).copy()


def paper_vectors(session: Session, *, model: str, papers: Mapping[int, str]) -> dict[int, np.ndarray]:
    """Stored vectors of ``papers`` (paper id → the text to embed) still matching that text."""
    found: dict[int, np.ndarray] = {}
    ids = list(papers)
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start : start + IN_CHUNK]
        rows = session.execute(select(PaperEmbedding.paper_id, PaperEmbedding.text_hash, PaperEmbedding.vector)
                               .where(PaperEmbedding.model == model, PaperEmbedding.paper_id.in_(chunk)))
        for paper_id, stored_hash, data in rows:
            if stored_hash == text_hash(papers[paper_id]):
                found[paper_id] = _vector(data)
    return found


def store_paper_vectors(session: Session, *, model: str, papers: Mapping[int, str], vectors: Mapping[int, np.ndarray]) -> None:
    """Keep new vectors; a paper whose text changed has its old vector replaced."""
    if not vectors:
        return
    ids = list(vectors)
    for start in range(0, len(ids), IN_CHUNK):
        chunk = ids[start : start + IN_CHUNK]
        for row in session.scalars(select(PaperEmbedding).where(PaperEmbedding.model == model, PaperEmbedding.paper_id.in_(chunk))):
            session.delete(row)  # stale: its text changed (fresh ones were not asked to be stored)
    session.flush()
    _insert_new(session, PaperEmbedding, [
        {"paper_id": paper_id, "model": model, "text_hash": text_hash(papers[paper_id]),
         "vector": np.asarray(vector, dtype=np.float32).tobytes(), "created_at": utcnow()}
        for paper_id, vector in vectors.items()])


def interest_vectors(session: Session, *, model: str, texts: Iterable[str]) -> dict[str, np.ndarray]:
    """Stored vectors of these interest texts (text → vector)."""
    by_hash = {text_hash(t): t for t in texts}
    hashes = list(by_hash)
    names: list[str] = []
    blobs: list[bytes] = []
    for start in range(0, len(hashes), INTEREST_CHUNK):
        chunk = hashes[start : start + INTEREST_CHUNK]
        rows = session.connection().execute(select(InterestEmbedding.text_hash, InterestEmbedding.vector)
                                            .where(InterestEmbedding.model == model, InterestEmbedding.text_hash.in_(chunk)))
        for stored_hash, data in rows:
            names.append(by_hash[stored_hash])
            blobs.append(data)
    # One array for all (rows of it per text): 100,000 subscribers' interests are ~70,000 vectors, and an
    # array each cost a second.
    if not blobs:
        return {}
    matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1).copy()
    return dict(zip(names, matrix, strict=True))


def store_interest_vectors(session: Session, *, model: str, vectors: Mapping[str, np.ndarray]) -> None:
    _insert_new(session, InterestEmbedding, [
        {"text_hash": text_hash(text), "model": model, "vector": np.asarray(vector, dtype=np.float32).tobytes(),
         "created_at": utcnow()} for text, vector in vectors.items()])


def _insert_new(session: Session, table: type[PaperEmbedding] | type[InterestEmbedding], rows: Sequence[dict]) -> None:
    """INSERT … ON CONFLICT DO NOTHING: two planners embedding the same new paper both succeed."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for start in range(0, len(rows), IN_CHUNK):
        session.execute(insert(table).on_conflict_do_nothing(), list(rows[start : start + IN_CHUNK]))


__all__ = ["InterestEmbedding", "PaperEmbedding", "embed_interests", "embed_papers", "interest_vectors", "paper_text",
           "paper_vectors", "store_interest_vectors", "store_paper_vectors", "text_hash"]
