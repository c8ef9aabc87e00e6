"""Sample text from a checkpoint.

    tinygpt generate --checkpoint data/model --prompt "def main(" --max-new-tokens 200

The checkpoint is a tinyGPT folder (model.safetensors + model_config.json, with the tokenizer in
`tokenizer/`) or a Hugging Face GPT-2 folder, whose tokenizer comes from `--vocab`.
`sample_texts` is the reusable core (the `sample` stage imports it).

A fine-tuned checkpoint (`python -m model.finetune`, with `template.json`; a LoRA adapter folder
too) also takes `--instruction TEXT` (and optionally `--input TEXT`) instead of `--prompt`: the
prompt is rendered with the template the model was fine-tuned with, generation stops at the
template's stop token (or EOS), and only the response is printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

import torch

from model.decoder import Decoder
from model.folders import load_any, tokenizer_folder
from model.runtime import resolve_device
from model.templates import cut_at_stop, load_template, render_prompt, stop_ids
from pipeline.commands import command_parser
from pipeline.errors import PipelineError, cli
from pipeline.tokenizer import Tokenizer, load_tokenizer


def encode_prompt(tokenizer: Tokenizer, prompt: str, block_size: int) -> list[int]:
    """Token ids of a prompt, after BOS when the tokenizer's documents start with one (unless the
    prompt, e.g. a chat template's, already does); an empty prompt starts from EOS. One-line errors
    for bad prompts."""
    unknown_chars = getattr(tokenizer, "unknown_chars", None)
    if unknown_chars is not None:
        unknown = unknown_chars(prompt)
        if unknown:
            shown = ", ".join(repr(c) for c in sorted(unknown))
            raise PipelineError(f"prompt has characters the '{tokenizer.name}' vocabulary does not know: {shown}")
    ids = with_bos(tokenizer, [int(i) for i in tokenizer.encode(prompt)]) or [tokenizer.eos_id]
    if len(ids) > block_size:
        raise PipelineError(f"prompt is {len(ids)} tokens, longer than the model's context of {block_size}")
    return ids


def with_bos(tokenizer: Tokenizer, ids: list[int]) -> list[int]:
    """`ids` after BOS when the tokenizer's documents start with one (the token store's do, so
    prompts do too) and they do not already."""
    bos = getattr(tokenizer, "bos_id", None)
    return [bos] + ids if bos is not None and ids[:1] != [bos] else ids


def sample_texts(
    model: Decoder,
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_k: Optional[int],
    top_p: Optional[float],
    seed: int,
    stops: Optional[Sequence[int]] = None,
) -> list[str]:
    """n samples per prompt, prompt-major: [p0 s0, p0 s1, ..., p1 s0, ...].

    Each text is the prompt followed by its continuation, cut before the first stop id (`stops`,
    default: EOS). Deterministic for a given seed (and device).
    """
    if n < 1:
        raise PipelineError(f"number of samples must be >= 1, got {n}")
    if max_new_tokens < 0:
        raise PipelineError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise PipelineError(
            f"tokenizer '{tokenizer.name}' has {tokenizer.vocab_size} tokens, the model only {model.config.vocab_size}"
        )
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    stops = list(stops or [tokenizer.eos_id])
    texts = []
    for prompt in prompts:
        ids = encode_prompt(tokenizer, prompt, model.config.block_size)
        idx = torch.tensor([ids] * n, dtype=torch.long, device=device)  # (n, T)
        out = model.generate(idx, max_new_tokens, temperature, top_k, top_p, eos_id=stops, generator=generator)
        for row in out[:, len(ids) :].tolist():
            ends = [i for i, token in enumerate(row) if token in stops]
            texts.append(prompt + tokenizer.decode(row[: ends[0]] if ends else row))
    return texts


def build_parser(prog: str = "python -m model.generate") -> argparse.ArgumentParser:
    p = command_parser(__doc__, prog)
    p.add_argument("--checkpoint", required=True, type=Path, help="tinyGPT checkpoint or Hugging Face GPT-2 folder")
    p.add_argument("--prompt", default="", help="text to continue (empty: start from EOS)")
    p.add_argument("--instruction", default=None, help="fine-tuned checkpoints (template.json): an instruction to answer")
    p.add_argument("--input", default=None, help="with --instruction: the optional input it refers to")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--vocab", type=Path, default=Path("data/vocab"), help="tokenizer folder when the checkpoint has none")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    return p


@cli
def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m model.generate") -> None:
    args = build_parser(prog).parse_args(argv)
    device = resolve_device(args.device)
    prompt, template = args.prompt, None
    if args.instruction is not None:
        if args.prompt:
            raise PipelineError("pass either --prompt or --instruction, not both")
        template = load_template(args.checkpoint)
        prompt = render_prompt(args.instruction, args.input, template)
    elif args.input is not None:
        raise PipelineError("--input needs --instruction")
    tokenizer = load_tokenizer(tokenizer_folder(args.checkpoint, args.vocab, "pass --vocab DIR"))
    model = load_any(args.checkpoint, map_location=device).eval()
    texts = sample_texts(
        model, tokenizer, [prompt], args.num_samples, args.max_new_tokens,
        args.temperature, args.top_k, args.top_p, args.seed, stop_ids(tokenizer, template) if template else None,
    )
    if template is not None:  # the response only, up to the template's stop
        texts = [cut_at_stop(text[len(prompt) :], template) for text in texts]
    for i, text in enumerate(texts):
        if i:
            print("\n---------------")
        print(text)


if __name__ == "__main__":
    main()
