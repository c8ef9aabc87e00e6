"""The `vocab` stage: put the tokenizer's files in `data/vocab/`, so loading never needs the network.

- gpt2: GPT-2's BPE ranks (tiktoken's r50k_base file, sha256 checked). Taken from a local cache,
  else from tiktoken's own download, else from the `openai-whisper` source distribution on the
  package index, which ships the same bytes as `whisper/assets/gpt2.tiktoken`.
- another tiktoken encoding: fetched through tiktoken (network or its cache), saved as ranks.
- char: the sorted set of characters in all configured sources (from their `scan@<source>` results).
- bpe: a byte-level BPE trained on the sources' train samples (`scan@<source>`, `pipeline/bpe.py`):
  Hugging Face's `tokenizer.json` and, when tiktoken encodes the samples identically, its ranks.
- hf: a model's own `tokenizer.json` from `tokenizer.path`, copied with its configs and chat template;
  named by the file's content hash, so the data and a model folder agree exactly when their files do.

`spec.json` always records `name`, `kind`, `vocab_size`, `eos_id` and `pad_id`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from pipeline.commands import stage_arguments
from pipeline.config import TokenizerConfig, load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir, atomic_file, read_json, remove_dropped_sources, write_json
from pipeline.paths import SAMPLE_FILE, SCAN_DIR, SCAN_FILE, VOCAB_DIR
from pipeline.tokenizer import (
    CHARS_FILE, CHAT_TEMPLATE_FILE, EOS_TEXT, GENERATION_CONFIG_FILE, HF_TOKENIZER_FILE, RANKS_FILE, SPEC_FILE, TOKENIZER_CONFIG_FILE,
    CharTokenizer, hf_tokenizer_name,
)

HF_FILES = (HF_TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, GENERATION_CONFIG_FILE, CHAT_TEMPLATE_FILE)  # what `hf` copies, when present

GPT2_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
WHISPER_SDIST = "openai-whisper==20250625"
WHISPER_MEMBER = "whisper/assets/gpt2.tiktoken"


def cache_dir() -> Path:
    """Per-user cache for downloaded vocabularies (`TINYGPT_CACHE`, else XDG cache)."""
    base = os.environ.get("TINYGPT_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tinygpt"
    return Path(base)


def serialize_ranks(ranks: dict[bytes, int]) -> bytes:
    """tiktoken's file format: one `base64(token) rank` line per token, by rank."""
    lines = (base64.b64encode(token) + b" " + str(rank).encode() for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]))
    return b"\n".join(lines) + b"\n"


def gpt2_ranks_bytes() -> bytes:
    """GPT-2's BPE ranks file, verified against its sha256, from the first source that works."""
    cached = cache_dir() / "gpt2.tiktoken"
    if cached.is_file() and hashlib.sha256(cached.read_bytes()).hexdigest() == GPT2_SHA256:
        return cached.read_bytes()
    fetchers = {"tiktoken's own download": _gpt2_from_tiktoken, WHISPER_SDIST: _gpt2_from_whisper_sdist}
    for label, fetch in fetchers.items():
        try:
            data = fetch()
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next source
            print(f"vocab: GPT-2 BPE from {label} failed: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
            continue
        if hashlib.sha256(data).hexdigest() == GPT2_SHA256:
            with atomic_file(cached, "wb") as handle:
                handle.write(data)
            return data
        print(f"vocab: GPT-2 BPE from {label} has the wrong sha256; ignored", file=sys.stderr)
    raise PipelineError("tokenizer.name=gpt2: could not obtain GPT-2's BPE file (no network and no package index?)")


def _gpt2_from_tiktoken() -> bytes:
    """r50k_base through tiktoken (its cache, else its download)."""
    from tiktoken_ext.openai_public import r50k_base

    return serialize_ranks(r50k_base()["mergeable_ranks"])


def _gpt2_from_whisper_sdist() -> bytes:
    """`whisper/assets/gpt2.tiktoken` from the openai-whisper sdist (the package is never installed)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "-d", tmp, WHISPER_SDIST],
            check=True,
            capture_output=True,
            timeout=600,
        )
        (archive,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(archive) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(WHISPER_MEMBER))
            return tar.extractfile(member).read()


def tiktoken_spec(name: str) -> tuple[dict, bytes]:
    """spec.json contents and ranks-file bytes for a tiktoken encoding."""
    from tiktoken_ext.openai_public import r50k_pat_str

    if name == "gpt2":
        return {"kind": "tiktoken", "name": "gpt2", "pat_str": r50k_pat_str, "special_tokens": {EOS_TEXT: 50256}}, gpt2_ranks_bytes()
    from tiktoken.registry import ENCODING_CONSTRUCTORS, _find_constructors

    _find_constructors()
    try:
        spec = ENCODING_CONSTRUCTORS[name]()
    except Exception as exc:  # noqa: BLE001 - network or cache failure inside tiktoken
        raise PipelineError(f"tokenizer.name={name}: tiktoken could not load it ({str(exc).splitlines()[0][:200]})") from None
    if EOS_TEXT not in spec["special_tokens"]:
        raise PipelineError(f"tokenizer.name={name}: the encoding has no {EOS_TEXT} token")
    meta = {"kind": "tiktoken", "name": name, "pat_str": spec["pat_str"], "special_tokens": spec["special_tokens"]}
    return meta, serialize_ranks(spec["mergeable_ranks"])


def read_scans(scan_dirs: list[Path], tokenizer: str) -> list[dict]:
    """The scan results of every source; they must have been made for `tokenizer`."""
    scans = []
    for folder in scan_dirs:
        if not (folder / SCAN_FILE).is_file():
            raise PipelineError(f"{folder / SCAN_FILE}: not found (run `dvc repro scan` first)")
        scan = read_json(folder / SCAN_FILE)
        if scan.get("tokenizer") != tokenizer:
            raise PipelineError(f"{folder}: scanned for tokenizer '{scan.get('tokenizer')}', not {tokenizer} (re-run `dvc repro scan`)")
        scans.append(scan)
    return scans


def samples(scan_dirs: list[Path]):
    """The train documents the scans kept for learning a vocabulary, source after source."""
    for folder in scan_dirs:
        with open(folder / SAMPLE_FILE, encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)


def build_vocab(cfg: TokenizerConfig, scan_dirs: list[Path], out_dir: Path) -> None:
    """Write the tokenizer files for `cfg.name` into `out_dir` (replaced whole, atomically)."""
    if cfg.name == "char":
        chars = "".join(sorted(set().union(*(scan["chars"] for scan in read_scans(scan_dirs, "char")))))
        ids = {"vocab_size": len(chars) + 2, "eos_id": CharTokenizer.EOS_ID, "pad_id": CharTokenizer.EOS_ID}
        with atomic_dir(out_dir) as tmp:
            write_json(tmp / CHARS_FILE, {"chars": chars})
            write_json(tmp / SPEC_FILE, {"kind": "char", "name": "char", **ids})
        return
    if cfg.name == "bpe":
        read_scans(scan_dirs, "bpe")
        build_bpe(cfg, scan_dirs, out_dir)
        return
    if cfg.name == "hf":
        copy_hf(Path(cfg.path), out_dir)
        return
    meta, ranks = tiktoken_spec(cfg.name)
    write_tiktoken(meta, ranks, out_dir)


def write_tiktoken(meta: dict, ranks: bytes, out_dir: Path, extra_files: dict[str, bytes] | None = None) -> None:
    eos_id = meta["special_tokens"][EOS_TEXT]
    highest_rank = int(ranks.rstrip().rsplit(b" ", 1)[1])  # the file lists tokens by rank
    size = max(highest_rank, *meta["special_tokens"].values()) + 1
    meta = {**meta, "eos_text": EOS_TEXT, "ranks_sha256": hashlib.sha256(ranks).hexdigest(),
            "vocab_size": size, "eos_id": eos_id, "pad_id": eos_id}
    with atomic_dir(out_dir) as tmp:
        (tmp / RANKS_FILE).write_bytes(ranks)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        write_json(tmp / SPEC_FILE, meta)


def build_bpe(cfg: TokenizerConfig, scan_dirs: list[Path], out_dir: Path) -> None:
    """Train the BPE; keep tiktoken's encoder when it agrees with `tokenizers` on every sample document."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    from pipeline.bpe import check_agreement, ranks, train_bpe

    texts = list(samples(scan_dirs))
    if not texts:
        raise PipelineError("tokenizer.name=bpe: the sources' scans hold no train documents to learn from")
    trained = train_bpe(texts, cfg.vocab_size)
    token_ranks, eos_id = ranks(trained), trained.token_to_id(EOS_TEXT)
    encoding = tiktoken.Encoding("bpe", pat_str=r50k_pat_str, mergeable_ranks=token_ranks, special_tokens={EOS_TEXT: eos_id})
    differing = check_agreement(trained, encoding, texts)
    hf_file = {HF_TOKENIZER_FILE: trained.to_str().encode()}
    meta = {"name": "bpe", "pat_str": r50k_pat_str, "special_tokens": {EOS_TEXT: eos_id},
            "trained_on": {"documents": len(texts), "bytes": sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)},
            "tiktoken_disagrees_on": differing}
    if differing == 0:
        write_tiktoken({"kind": "tiktoken", **meta}, serialize_ranks(token_ranks), out_dir, hf_file)
        return
    print(f"vocab: tiktoken encodes {differing} sample documents differently; using the slower `tokenizers`", file=sys.stderr)
    size = trained.get_vocab_size(with_added_tokens=True)
    with atomic_dir(out_dir) as tmp:
        (tmp / HF_TOKENIZER_FILE).write_bytes(hf_file[HF_TOKENIZER_FILE])
        write_json(tmp / SPEC_FILE, {"kind": "hf", **meta, "eos_text": EOS_TEXT, "vocab_size": size, "eos_id": eos_id, "pad_id": eos_id})


def copy_hf(folder: Path, out_dir: Path) -> None:
    """A model's own tokenizer: its `tokenizer.json` (and `tokenizer_config.json`, `generation_config.json`
    and `chat_template.jinja` when present) copied as they are; EOS, BOS and stop ids read from them."""
    from tokenizers import Tokenizer as Backend

    source = folder / HF_TOKENIZER_FILE
    if not source.is_file():
        raise PipelineError(f"tokenizer.path: {source} not found (a Hugging Face model or tokenizer folder)")
    files = {name: (folder / name).read_bytes() for name in HF_FILES if (folder / name).is_file()}
    try:
        config = json.loads(files.get(TOKENIZER_CONFIG_FILE, b"{}"))
        generation = json.loads(files.get(GENERATION_CONFIG_FILE, b"{}"))
        backend = Backend.from_file(str(source))
    except Exception as exc:  # malformed JSON or a tokenizer.json the library cannot read
        raise PipelineError(f"tokenizer.path: {folder}: unreadable tokenizer files ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    eos_ids = _as_ids(generation.get("eos_token_id"))
    eos_text = _token_text(config.get("eos_token")) or (backend.id_to_token(eos_ids[0]) if eos_ids else None)
    if eos_text is None or backend.token_to_id(eos_text) is None:
        raise PipelineError(f"tokenizer.path: {folder}: no end-of-text token in {TOKENIZER_CONFIG_FILE} or {GENERATION_CONFIG_FILE}")
    eos_id = backend.token_to_id(eos_text)
    bos_ids = _as_ids(generation.get("bos_token_id"))
    bos_text = _token_text(config.get("bos_token")) or (backend.id_to_token(bos_ids[0]) if bos_ids else None)
    bos_id = None if bos_text is None else backend.token_to_id(bos_text)
    adds_bos = bos_id is not None and (config.get("add_bos_token") is True or backend.encode("a").ids[:1] == [bos_id])
    spec = {"kind": "hf", "name": hf_tokenizer_name(source), "source": folder.name,
            "vocab_size": backend.get_vocab_size(with_added_tokens=True), "eos_text": eos_text, "eos_id": eos_id, "pad_id": eos_id,
            "bos_text": bos_text if adds_bos else None, "bos_id": bos_id if adds_bos else None,
            "stop_ids": sorted({eos_id, *eos_ids})}
    with atomic_dir(out_dir) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        write_json(tmp / SPEC_FILE, spec)


def _token_text(value) -> Optional[str]:
    """A special token as tokenizer_config.json spells it: a string or {"content": ...}."""
    return value.get("content") if isinstance(value, dict) else value


def _as_ids(value) -> list[int]:
    """generation_config.json's token ids: one int, a list, or absent."""
    return [] if value is None else [value] if isinstance(value, int) else list(value)


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    stage_arguments(__doc__, "pipeline.vocab", argv)
    params = load_params()
    remove_dropped_sources(SCAN_DIR, params.sources, "vocab")
    build_vocab(params.tokenizer, [SCAN_DIR / name for name in params.sources], VOCAB_DIR)


if __name__ == "__main__":
    main()
