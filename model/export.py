"""Export a checkpoint as a Hugging Face folder that `transformers` loads with no code of ours.

    python -m model.export --checkpoint data/model --out export/

GPT-2 and Llama-layout checkpoints alike. The folder holds model.safetensors and config.json
(model/folders.py `write_hf`), generation_config.json (bos/eos/pad ids), the chat template as
chat_template.jinja when the model has one (a model's own, or the one it was fine-tuned with), and
the checkpoint's tokenizer as tokenizer.json + tokenizer_config.json, by the kind its spec.json names:
- tiktoken (GPT-2's BPE, or a trained BPE kept as ranks): a byte-level BPE rebuilt from the ranks,
  with tiktoken's split pattern; it encodes text to the same ids as tiktoken;
- hf (a trained BPE that only `tokenizers` encodes, or a model's own): its tokenizer.json, copied;
- char: a WordLevel model over single characters (unknown characters are id 1, as ours).
A model's own tokenizer (`tokenizer.name: hf`) keeps its tokenizer_config.json, BOS and stop ids;
otherwise the end-of-text token is bos, eos and pad, as in our data. Unlike our `encode`, Hugging
Face tokenizers read a literal `<|endoftext|>` in the text as that special token. A Qwen2-layout model
(q/k/v biases) gets transformers' own Qwen2Tokenizer from AutoTokenizer, which splits text with
Qwen's pattern whatever tokenizer.json says (`PreTrainedTokenizerFast.from_pretrained` reads it as is).

`--out` is replaced whole, atomically; a folder holding files an export does not write is refused
unless `--force`, so a mistyped path cannot wipe unrelated work.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Optional, Sequence

from model.folders import (
    HF_CONFIG_FILE, TEMPLATE_FILE, TOKENIZER_DIR, WEIGHTS_FILE, load_any, write_hf,
)
from model.templates import load_template
from pipeline.commands import command_parser
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir, write_json
from pipeline.tokenizer import (
    CHARS_FILE, CHAT_TEMPLATE_FILE, EOS_TEXT, GENERATION_CONFIG_FILE, HF_TOKENIZER_FILE, RANKS_FILE, SPEC_FILE,
    TOKENIZER_CONFIG_FILE,
)

UNK_TEXT = "\ufffd"  # what our CharTokenizer decodes its unknown id to
EXPORT_FILES = (WEIGHTS_FILE, HF_CONFIG_FILE, GENERATION_CONFIG_FILE, HF_TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE)


def export(checkpoint: str | Path, out_dir: str | Path, vocab_dir: str | Path | None = None, force: bool = False) -> None:
    """Write `checkpoint` (ours or any folder `load_any` reads) as a Hugging Face folder `out_dir`,
    replaced whole, atomically. vocab_dir: the tokenizer folder (default: the checkpoint's `tokenizer/`)."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    check_out_dir(out_dir, force)
    vocab_dir = Path(vocab_dir) if vocab_dir is not None else checkpoint / TOKENIZER_DIR
    if not (vocab_dir / SPEC_FILE).is_file():
        raise PipelineError(f"{vocab_dir / SPEC_FILE}: not found (export needs the checkpoint's tokenizer; pass --vocab)")
    spec = json.loads((vocab_dir / SPEC_FILE).read_text())
    model = load_any(checkpoint)
    if spec["vocab_size"] > model.config.vocab_size:
        raise PipelineError(
            f"{vocab_dir / SPEC_FILE}: vocab_size {spec['vocab_size']} exceeds the model's {model.config.vocab_size}"
        )
    tokenizer = hf_tokenizer(vocab_dir, spec)
    chat_template = export_chat_template(checkpoint, vocab_dir)
    with atomic_dir(out_dir) as tmp:
        write_hf(model, tmp, eos_id=spec["eos_id"])
        if tokenizer is None:
            shutil.copyfile(vocab_dir / HF_TOKENIZER_FILE, tmp / HF_TOKENIZER_FILE)
        else:
            tokenizer.save(str(tmp / HF_TOKENIZER_FILE))
        if (vocab_dir / TOKENIZER_CONFIG_FILE).is_file():  # a model's own tokenizer: its settings as they were
            shutil.copyfile(vocab_dir / TOKENIZER_CONFIG_FILE, tmp / TOKENIZER_CONFIG_FILE)
        else:
            unk_text = None if tokenizer is None else tokenizer.model.unk_token
            write_json(tmp / TOKENIZER_CONFIG_FILE, tokenizer_config(spec, unk_text, model.config.block_size))
        if chat_template is not None:
            (tmp / CHAT_TEMPLATE_FILE).write_text(chat_template)
        write_json(tmp / GENERATION_CONFIG_FILE, generation_config(spec))


def check_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse to replace a file, or a folder holding files an export does not write, unless `force`."""
    if out_dir.is_file():
        raise PipelineError(f"--out {out_dir}: is a file, not a folder")
    if force or not out_dir.is_dir():
        return
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in EXPORT_FILES)
    if others:
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        raise PipelineError(f"--out {out_dir}: holds {others[0]}{more}, which an export does not write; "
                            f"pass --force to replace the whole folder")


def export_chat_template(checkpoint: Path, vocab_dir: Path) -> Optional[str]:
    """The jinja chat template to export: the one the checkpoint was fine-tuned with (template
    `model` in its template.json), else the tokenizer's own chat_template.jinja; None without one."""
    if (checkpoint / TEMPLATE_FILE).is_file() and (source := load_template(checkpoint).chat_template):
        return source
    if (vocab_dir / CHAT_TEMPLATE_FILE).is_file():
        return (vocab_dir / CHAT_TEMPLATE_FILE).read_text()
    return None


def hf_tokenizer(vocab_dir: Path, spec: dict):
    """A `tokenizers.Tokenizer` equivalent to the vocab folder's; None: copy its tokenizer.json."""
    kind = spec["kind"]
    if kind == "hf":
        return None
    if kind == "char":
        return char_tokenizer(json.loads((vocab_dir / CHARS_FILE).read_text())["chars"])
    if kind != "tiktoken":
        raise PipelineError(f"{vocab_dir / SPEC_FILE}: tokenizer kind '{kind}' cannot be exported (tiktoken, hf, char)")
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(vocab_dir / RANKS_FILE), expected_hash=spec["ranks_sha256"])
    merges = bpe_merges(ranks, str(vocab_dir / RANKS_FILE))
    return tiktoken_tokenizer(ranks, merges, spec["pat_str"], spec["special_tokens"])


def bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's BPE of `token` using only tokens ranked below `max_rank`: repeatedly join the
    adjacent pair whose join has the lowest rank (the leftmost on ties)."""
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 1:
        joined = [ranks.get(a + b, max_rank) for a, b in zip(parts, parts[1:])]
        best = min(range(len(joined)), key=joined.__getitem__)
        if joined[best] >= max_rank:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts


def bpe_merges(ranks: dict[bytes, int], source: str) -> list[tuple[bytes, bytes]]:
    """The merge list of a ranks table, by rank: each multi-byte token is the join of the two parts
    tiktoken's BPE reaches with the tokens ranked below it."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        parts = bpe_parts(ranks, token, rank)
        if len(parts) != 2:
            raise PipelineError(f"{source}: token {token!r} (rank {rank}) is not the merge of two lower-ranked tokens")
        merges.append((parts[0], parts[1]))
    return merges


def tiktoken_tokenizer(ranks: dict[bytes, int], merges: list[tuple[bytes, bytes]], pat_str: str,
                       special_tokens: dict[str, int]):
    """A byte-level BPE `tokenizers.Tokenizer` that encodes as tiktoken does with these ranks: its
    pattern splits the text, a piece that is a token is kept whole (`ignore_merges`), other pieces
    are merged by rank."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    from pipeline.bpe import byte_decoder

    char_of = {b: c for c, b in byte_decoder().items()}

    def text(token: bytes) -> str:
        return "".join(char_of[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    vocab.update(special_tokens)
    model = models.BPE(vocab, [(text(a), text(b)) for a, b in merges], ignore_merges=True)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pat_str), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    return tokenizer


def char_tokenizer(chars: str):
    """A `tokenizers.Tokenizer` over single characters: EOS 0, unknown 1, then `chars` from 2 (our CharTokenizer)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    unk = UNK_TEXT if UNK_TEXT not in chars else "<|unk|>"
    vocab = {EOS_TEXT: 0, unk: 1, **{c: i for i, c in enumerate(chars, 2)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken(EOS_TEXT, special=True, normalized=False)])
    return tokenizer


def tokenizer_config(spec: dict, unk_text: Optional[str], block_size: int) -> dict:
    """tokenizer_config.json: the generic fast tokenizer (it reads tokenizer.json as it is); EOS is also
    pad, and bos unless the tokenizer starts texts with a BOS token of its own."""
    eos_text = spec.get("eos_text", EOS_TEXT)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": block_size,
        "bos_token": spec.get("bos_text") or eos_text,
        "eos_token": eos_text,
        "pad_token": eos_text,
        "clean_up_tokenization_spaces": False,
    }
    if spec.get("bos_text"):
        config["add_bos_token"] = True
    if unk_text is not None:
        config["unk_token"] = unk_text
    return config


def generation_config(spec: dict) -> dict:
    """generation_config.json: bos (EOS unless the tokenizer has its own), eos (every stop id) and pad ids."""
    stop_ids = spec.get("stop_ids") or [spec["eos_id"]]
    bos_id = spec.get("bos_id")
    return {
        "bos_token_id": spec["eos_id"] if bos_id is None else bos_id,
        "eos_token_id": stop_ids[0] if len(stop_ids) == 1 else stop_ids,
        "pad_token_id": spec["pad_id"],
    }


def build_parser(prog: str = "python -m model.export") -> argparse.ArgumentParser:
    p = command_parser(__doc__, prog)
    p.add_argument("--checkpoint", type=Path, default=Path("data/model"), help="checkpoint folder (ours or Hugging Face's)")
    p.add_argument("--out", type=Path, required=True, help="output folder (replaced whole)")
    p.add_argument("--vocab", type=Path, default=None, help="tokenizer folder (default: the checkpoint's tokenizer/)")
    p.add_argument("--force", action="store_true", help="replace --out even if it holds files an export does not write")
    return p


@cli
def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m model.export") -> None:
    args = build_parser(prog).parse_args(argv)
    export(args.checkpoint, args.out, args.vocab, args.force)
    print(f"exported {args.checkpoint} to {args.out}")


if __name__ == "__main__":
    main()
