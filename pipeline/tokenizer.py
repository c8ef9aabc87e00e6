"""Tokenizers behind one small interface, loaded offline from the `vocab` stage's output folder.

`vocab/spec.json` says which kind it is (`kind`), its `name`, `vocab_size`, `eos_id` and `pad_id`:
- tiktoken: BPE ranks in `ranks.tiktoken` (tiktoken's own file format), split pattern, special tokens
  (GPT-2, other tiktoken encodings, and a BPE trained on the sources, see `pipeline/bpe.py`);
- hf: a Hugging Face `tokenizer.json`, through the `tokenizers` library (a trained BPE, or a model's
  own tokenizer with its BOS/EOS and stop ids);
- char: the characters seen in the sources, in `chars.json`; unknown characters map to one id.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional, Protocol, Sequence

import numpy as np

from pipeline.errors import PipelineError

SPEC_FILE = "spec.json"  # which tokenizer a vocab folder holds: kind, name, vocab_size, eos_id, pad_id
RANKS_FILE = "ranks.tiktoken"
CHARS_FILE = "chars.json"
HF_TOKENIZER_FILE = "tokenizer.json"  # Hugging Face's format (a trained BPE keeps it beside its ranks)
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"  # Hugging Face: bos/eos tokens, and the chat_template in older folders
GENERATION_CONFIG_FILE = "generation_config.json"  # Hugging Face: bos/eos (stop) token ids
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # Hugging Face (transformers 5): the chat template, beside tokenizer_config.json
EOS_TEXT = "<|endoftext|>"


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_id: int
    pad_id: int  # equals eos_id: padding is never a target, the loss mask says which positions count

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The texts' tokens back to back and each text's token count: what `encode` gives, text by text."""
        ...

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes each token id stands for, (vocab_size,) int64; 0 for EOS and other specials.

        The sum over a document's tokens is its UTF-8 size, which turns losses into bits per byte."""
        ...


class TiktokenTokenizer:
    """A tiktoken BPE (GPT-2's r50k ranks by default) built from local files only."""

    def __init__(self, name: str, ranks_path: Path, ranks_sha256: str, pat_str: str, special_tokens: dict[str, int], eos_text: str):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        # the hash matters: tiktoken caches files by their *path*, so without it another vocabulary
        # once loaded from the same path (data/vocab/ranks.tiktoken of another run) would come back
        ranks = load_tiktoken_bpe(str(ranks_path), expected_hash=ranks_sha256)
        self._encoding = tiktoken.Encoding(
            name=name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=special_tokens
        )
        self.name = name
        self.vocab_size = self._encoding.n_vocab
        self.eos_id = special_tokens[eos_text]
        self.pad_id = self.eos_id
        self._dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

    def encode(self, text: str) -> np.ndarray:
        """Ordinary text only: a literal '<|endoftext|>' in the text is not the EOS token."""
        try:
            ids = self._encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        except UnicodeEncodeError:  # lone surrogates: encode_ordinary repairs them, encode_to_numpy cannot
            ids = self._encoding.encode_ordinary(text)
        return np.asarray(ids).astype(self._dtype, copy=False)

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """One call into tiktoken for the whole batch: the texts joined with the EOS text, allowed as
        the special token. tiktoken encodes the text between special tokens piece by piece, so each
        text gets exactly its own tokens, and the EOS ids mark where texts end. A text that holds the
        EOS text itself (ordinary text for `encode`) is the rare case encoded text by text."""
        joined = EOS_TEXT.join(texts)
        if joined.count(EOS_TEXT) != len(texts) - 1:  # the EOS text cannot overlap itself, so only a text can add one
            return encode_one_by_one(self, texts)
        try:
            ids = self._encoding.encode_to_numpy(joined, allowed_special={EOS_TEXT}, disallowed_special=())
        except UnicodeEncodeError:  # lone surrogates: repaired the way encode_ordinary repairs them
            repaired = joined.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
            ids = np.asarray(self._encoding.encode(repaired, allowed_special={EOS_TEXT}, disallowed_special=()), dtype=np.uint32)
        ends = np.flatnonzero(ids == self.eos_id)
        lengths = np.diff(ends, prepend=-1, append=len(ids)) - 1
        return ids[ids != self.eos_id].astype(self._dtype), lengths

    def decode(self, ids: Sequence[int]) -> str:
        return self._encoding.decode([int(i) for i in ids])

    def token_bytes(self) -> np.ndarray:
        special = set(self._encoding.special_tokens_set)
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            try:
                out[i] = len(self._encoding.decode_single_token_bytes(i))
            except KeyError:  # a gap in the ranks
                continue
        for text in special:
            out[self._encoding.encode_single_token(text)] = 0
        return out


class CharTokenizer:
    """Character-level: id 0 is EOS, id 1 stands for any unknown character, then one id per character."""

    EOS_ID = 0
    UNK_ID = 1

    def __init__(self, chars: str):
        self.name = "char"
        self.chars = chars
        self.vocab_size = len(chars) + 2
        self.eos_id = self.EOS_ID
        self.pad_id = self.EOS_ID
        codepoints = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32)
        self._lookup = np.full(int(codepoints.max(initial=0)) + 1, self.UNK_ID, dtype=np.uint32)
        self._lookup[codepoints] = np.arange(2, self.vocab_size, dtype=np.uint32)
        self._dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.uint32
        self._known = set(chars)

    def encode(self, text: str) -> np.ndarray:
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        known = codepoints < len(self._lookup)
        ids = np.full(len(codepoints), self.UNK_ID, dtype=np.uint32)
        ids[known] = self._lookup[codepoints[known]]
        return ids.astype(self._dtype)

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """One lookup for the whole batch; a text's length is its number of code points."""
        return self.encode("".join(texts)), np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))

    def decode(self, ids: Sequence[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            out.append(EOS_TEXT if i == self.EOS_ID else "\ufffd" if i == self.UNK_ID else self.chars[i - 2])
        return "".join(out)

    def token_bytes(self) -> np.ndarray:
        """EOS 0, unknown 1 (a stand-in: the vocabulary is built from the data, so it never occurs there)."""
        sizes = [len(c.encode("utf-8", "surrogatepass")) for c in self.chars]
        return np.array([0, 1, *sizes], dtype=np.int64)

    def unknown_chars(self, text: str) -> set[str]:
        """Characters of `text` this vocabulary does not know."""
        return set(text) - self._known


class HFTokenizer:
    """A Hugging Face `tokenizer.json` through the `tokenizers` library: a BPE trained on the sources,
    or a model's own tokenizer (`tokenizer.name: hf`). `bos_id` (from `bos_text`) is the token the
    model expects at each document start (Llama 2, TinyLlama); `encode` never adds it: the tokenize
    stage puts it before every document and generation before a prompt (`with_bos`)."""

    def __init__(self, name: str, path: Path, eos_text: str, bos_text: Optional[str] = None):
        from tokenizers import Tokenizer as Backend

        self._backend = Backend.from_file(str(path))
        self.name = name
        self.vocab_size = self._backend.get_vocab_size(with_added_tokens=True)
        self.eos_id = self._backend.token_to_id(eos_text)
        if self.eos_id is None:
            raise PipelineError(f"{path}: no token {eos_text!r} (the end-of-text token)")
        self.pad_id = self.eos_id
        self.bos_id = None if bos_text is None else self._backend.token_to_id(bos_text)
        if bos_text is not None and self.bos_id is None:
            raise PipelineError(f"{path}: no token {bos_text!r} (the beginning-of-text token)")
        self._dtype = np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._backend.encode(text, add_special_tokens=False).ids, dtype=self._dtype)

    def encode_batch(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        tokens = np.fromiter((i for e in encodings for i in e.ids), dtype=self._dtype, count=int(lengths.sum()))
        return tokens, lengths

    def decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """Byte-level BPE: one byte per character of the token's string. SentencePiece-style
        (Metaspace): `<0xNN>` byte-fallback tokens 1, else the UTF-8 size with `▁` standing for a
        space (so the space Metaspace puts before a text's first word counts one byte more than the
        text has). Other special tokens 0."""
        out = np.zeros(self.vocab_size, dtype=np.int64)
        special = {t.content for t in self._backend.get_added_tokens_decoder().values() if t.special}
        byte_level = '"ByteLevel"' in json.dumps(json.loads(self._backend.to_str()).get("decoder"))
        for token, i in self._backend.get_vocab(with_added_tokens=True).items():
            if not byte_level and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                out[i] = 1
            elif token in special:
                continue
            elif byte_level:
                out[i] = len(token)
            else:
                out[i] = len(token.replace("\u2581", " ").encode("utf-8", "surrogatepass"))
        return out


def with_bos(tokenizer: Tokenizer, tokens: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Documents back to back (`encode_batch`'s output) with the tokenizer's BOS before each, when it
    has one (`bos_id`); unchanged otherwise."""
    bos = getattr(tokenizer, "bos_id", None)
    if bos is None or not len(lengths):
        return tokens, lengths
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.insert(tokens, starts, np.asarray(bos, dtype=tokens.dtype)), lengths + 1


def hf_tokenizer_name(tokenizer_file: Path) -> str:
    """The name a Hugging Face tokenizer goes by in manifests: its file's content hash, so that data
    and a model folder agree exactly when their `tokenizer.json` files are the same."""
    return "hf-" + hashlib.sha256(Path(tokenizer_file).read_bytes()).hexdigest()[:16]


def encode_one_by_one(tokenizer: Tokenizer, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """`encode_batch` the slow way: `encode` per text."""
    arrays = [tokenizer.encode(text) for text in texts]
    lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))
    return (np.concatenate(arrays) if arrays else np.zeros(0, np.uint32)), lengths


def tokenizer_info(vocab_dir: str | Path) -> dict:
    """`tokenizer`, `vocab_size`, `eos_id`, `pad_id` of a vocab folder, without loading the tokenizer."""
    spec = _read_spec(Path(vocab_dir))
    return {"tokenizer": spec["name"], "vocab_size": spec["vocab_size"], "eos_id": spec["eos_id"], "pad_id": spec["pad_id"]}


def _read_spec(vocab_dir: Path) -> dict:
    spec_path = vocab_dir / SPEC_FILE
    if not spec_path.is_file():
        raise PipelineError(f"{spec_path}: not found (run `dvc repro vocab` first)")
    return json.loads(spec_path.read_text())


def load_tokenizer(vocab_dir: str | Path) -> Tokenizer:
    """Load the tokenizer saved by the `vocab` stage. Never touches the network."""
    vocab_dir = Path(vocab_dir)
    spec = _read_spec(vocab_dir)
    if spec["kind"] == "char":
        return CharTokenizer(json.loads((vocab_dir / CHARS_FILE).read_text())["chars"])
    if spec["kind"] == "hf":
        return HFTokenizer(spec["name"], vocab_dir / HF_TOKENIZER_FILE, spec["eos_text"], spec.get("bos_text"))
    return TiktokenTokenizer(
        name=spec["name"],
        ranks_path=vocab_dir / RANKS_FILE,
        ranks_sha256=spec["ranks_sha256"],
        pat_str=spec["pat_str"],
        special_tokens=spec["special_tokens"],
        eos_text=spec["eos_text"],
    )
