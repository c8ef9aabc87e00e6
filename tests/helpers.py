"""Helpers the tests share: tiny vocab folders, token stores and a reference block materialiser."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import numpy as np

from pipeline.io import write_json
from pipeline.paths import MANIFEST_FILE
from pipeline.hashing import HASH_BYTES
from pipeline.store import StoreWriter, TokenStore

REPO = Path(__file__).resolve().parents[1]


def module_file(name: str) -> Path | None:
    """The file of project module `name` (`model.gpt` -> model/gpt.py, a package's __init__.py), or None."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def direct_imports(path: Path) -> set[Path]:
    """The files of the project modules `path` imports anywhere in it (inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {f for f in map(module_file, names) if f is not None and f != path}
    return found


def write_char_vocab(path: Path, chars: str) -> Path:
    """A `char` tokenizer folder for the given characters."""
    path.mkdir(parents=True, exist_ok=True)
    size = len(set(chars)) + 2
    (path / "chars.json").write_text(json.dumps({"chars": "".join(sorted(set(chars)))}))
    spec = {"kind": "char", "name": "char", "vocab_size": size, "eos_id": 0, "pad_id": 0}
    (path / "spec.json").write_text(json.dumps(spec))
    return path


def text_hash(text: str) -> bytes:
    """The content hash the tokenize stage gives a document."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=HASH_BYTES).digest()


def write_store(folder: Path, docs: list, hashes: list[bytes] | None = None, dtype=np.uint16,
                shard_tokens: int | None = None, batch: int = 7) -> TokenStore:
    """A token store holding `docs` (arrays of ids), written in batches of `batch` documents."""
    folder.mkdir(parents=True)
    hashes = hashes if hashes is not None else [i.to_bytes(HASH_BYTES, "big") for i in range(len(docs))]
    writer = StoreWriter(folder, dtype, **({"shard_tokens": shard_tokens} if shard_tokens else {}))
    for at in range(0, len(docs), batch):
        part = [np.asarray(d, dtype=dtype) for d in docs[at : at + batch]]
        writer.append(np.concatenate(part) if part else np.zeros(0, dtype), np.array([len(d) for d in part], dtype=np.int64),
                      np.frombuffer(b"".join(hashes[at : at + batch]), dtype=np.uint8).reshape(-1, HASH_BYTES))
    write_json(folder / MANIFEST_FILE, {**writer.close(), "tokenizer": "test", "vocab_size": 1000})
    return TokenStore(folder)


def materialise(docs: list, plan: list[list[tuple[int, int, int]]], width: int, eos_id: int, pad_id: int):
    """Reference blocks: each planned piece (doc, start, length) of `docs[doc] + [EOS]` copied in
    place, row by row, as the first version of `pack` wrote them to disk. Returns (tokens, segments)."""
    tokens = np.full((len(plan), width), pad_id, dtype=np.int64)
    segments = np.zeros((len(plan), width), dtype=np.int64)
    for b, pieces in enumerate(plan):
        at = 0
        for s, (doc, start, length) in enumerate(pieces, 1):
            full = np.append(np.asarray(docs[doc], dtype=np.int64), eos_id)
            tokens[b, at : at + length] = full[start : start + length]
            segments[b, at : at + length] = s
            at += length
    return tokens, segments


def planted_corpus(n_unrelated: int, n_planted: int, change: float, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """Unrelated documents of 150-400 words (Zipf-distributed over 5,000 made-up words), and for the
    first `n_planted` of them a copy with a header line added and `change` of its words replaced.
    Returns the texts and the planted (original, copy) index pairs."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(5000)]
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()

    def words(n: int) -> list[str]:
        return [vocab[i] for i in rng.choice(len(vocab), size=n, p=weights)]

    texts = [" ".join(words(int(rng.integers(150, 401)))) for _ in range(n_unrelated)]
    pairs = []
    for i in range(n_planted):
        copy = texts[i].split()
        for at in rng.choice(len(copy), size=round(change * len(copy)), replace=False):
            copy[at] = vocab[int(rng.integers(len(vocab)))]
        pairs.append((i, len(texts)))
        texts.append(f"Mirrored from archive {i}, page {rng.integers(1000)}.\n" + " ".join(copy))
    return texts, pairs


def shingle_jaccard(a: str, b: str, n: int) -> float:
    """Exact Jaccard similarity of two texts' word n-gram sets (what MinHash estimates)."""
    from pipeline.dedup import shingles

    x, y = set(shingles(a, n)), set(shingles(b, n))
    return len(x & y) / len(x | y)


def write_hf_model_tokenizer(folder, sentencepiece: bool, vocab_words: int = 0):
    """A model folder's tokenizer files, as a Hugging Face model ships them. sentencepiece: Llama 2
    style (Metaspace, byte fallback, <s> added at the start); else byte-level BPE without BOS and two
    stop ids in generation_config.json. `vocab_words` pads the vocabulary with added tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = ["the cat sat on the mat, naïvely", "def f(x):\n    return x + 1"] * 20
    folder.mkdir(parents=True)
    if sentencepiece:
        tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
        special = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
        tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=special))
        config = {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "add_bos_token": True}
        generation = {"bos_token_id": 1, "eos_token_id": 2}
    else:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_end|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer)
        config = {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}
        generation = {"eos_token_id": [0, 1]}
    if vocab_words:
        tok.add_tokens([f"word{i}" for i in range(vocab_words)])
    tok.save(str(folder / "tokenizer.json"))
    write_json(folder / "tokenizer_config.json", config)
    write_json(folder / "generation_config.json", generation)
    return folder


def write_byte_vocab(path: Path, specials: tuple[str, ...] = ()) -> Path:
    """An `hf` tokenizer folder: byte-level BPE without merges (one token per byte), then
    `<|endoftext|>` (EOS) and `specials` as special tokens, each one id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    path.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|endoftext|>", *specials])
    tokenizer.save(str(path / "tokenizer.json"))
    eos = tokenizer.token_to_id("<|endoftext|>")
    spec = {"kind": "hf", "name": "bytes", "vocab_size": tokenizer.get_vocab_size(), "eos_id": eos, "pad_id": eos,
            "eos_text": "<|endoftext|>"}
    (path / "spec.json").write_text(json.dumps(spec))
    return path


def save_model(model, path: Path, tokenizer_dir: Path | None = None) -> Path:
    """Write `model` as our checkpoint folder, atomically, as the stages do (model/folders.py)."""
    from model.folders import write_ours
    from pipeline.io import atomic_dir

    with atomic_dir(path) as tmp:
        write_ours(model, tmp, tokenizer_dir)
    return Path(path)


def save_hf(model, path: Path, eos_id: int | None = None) -> Path:
    """Write `model` as a Hugging Face folder, atomically (model/folders.py)."""
    from model.folders import write_hf
    from pipeline.io import atomic_dir

    with atomic_dir(path) as tmp:
        write_hf(model, tmp, eos_id)
    return Path(path)
