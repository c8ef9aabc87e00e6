"""Chat with a model in the terminal: each turn rendered with the model's chat template, the reply
printed token by token as it is generated, until the template's stop token.

    tinygpt chat --checkpoint data/finetuned
    tinygpt chat --checkpoint models/SmolLM2-135M-Instruct --vocab data/vocab --system "Be brief."

The template is the one the checkpoint was fine-tuned with (its template.json), else the model's own
chat template (chat_template.jinja, or chat_template in tokenizer_config.json, of the checkpoint or
its tokenizer folder), else `--template`. Type a message and press Enter; `/reset` starts a new
conversation, `/quit` or end of input (Ctrl-D) leaves. Earlier turns go back to the model as they
were trained (replies and their stop tokens); the oldest are dropped when the conversation outgrows
the model's context.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, TextIO

import torch

from model.decoder import Decoder
from model.folders import TEMPLATE_FILE, load_any, tokenizer_folder
from model.records import encode_segments
from model.runtime import resolve_device
from model.templates import TEMPLATES, Template, find_model_template, get_template, load_template, prompt_segments, stop_ids
from pipeline.commands import command_parser
from pipeline.errors import PipelineError, cli
from pipeline.tokenizer import Tokenizer, load_tokenizer

REPLACEMENT = "\ufffd"  # what a token that ends inside a UTF-8 character decodes to, until the next one


def chat_template(checkpoint: Path, tokenizer_dir: Path, fallback: Optional[str]) -> Template:
    """The checkpoint's fine-tuning template, else the model's own chat template, else `fallback`."""
    if (checkpoint / TEMPLATE_FILE).is_file():
        return load_template(checkpoint)
    own = find_model_template([checkpoint, tokenizer_dir])  # a broken one is an error, not a reason to fall back
    if own is not None:
        return own
    if fallback is None:
        raise PipelineError(f"{checkpoint}: no {TEMPLATE_FILE} and no chat template of its own; pass --template "
                            f"({', '.join(TEMPLATES)})")
    return get_template(fallback)


def prompt_ids(tokenizer: Tokenizer, messages: list[dict], template: Template, block_size: int,
               max_new_tokens: int) -> list[int]:
    """Token ids of the conversation up to the reply's opening; the oldest turns (not the system
    message) are dropped until the context keeps room for a reply (`max_new_tokens`, at most a
    quarter of the context), so the reply never pushes the system message out of the window."""
    room = max(1, min(max_new_tokens, block_size // 4))
    while True:
        ids = encode_segments(tokenizer, prompt_segments(messages, template))[0].tolist()
        if len(ids) + room <= block_size:
            return ids
        turns = [i for i, m in enumerate(messages) if m["role"] != "system"]  # user, assistant, ..., user
        if len(turns) < 3:
            raise PipelineError(f"the message is {len(ids)} tokens; with {room} for the reply that is more than "
                                f"the model's context of {block_size}")
        del messages[turns[0] : turns[2]]  # the oldest user turn and its reply


def stream_reply(model: Decoder, tokenizer: Tokenizer, ids: list[int], stops: Sequence[int], stop_text: Optional[str],
                 max_new_tokens: int, temperature: float, top_k: Optional[int], top_p: Optional[float],
                 generator: torch.Generator) -> Iterator[str]:
    """The reply as pieces of text, each as soon as it is complete: up to a stop token, or up to the
    stop text when the template's stop is not one token (it is never shown)."""
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    new: list[int] = []
    shown = ""
    for step in model.stream(idx, max_new_tokens, temperature, top_k, top_p, eos_id=list(stops), generator=generator):
        token = int(step[0, 0])
        if token in stops:
            break
        new.append(token)
        text = tokenizer.decode(new)
        if stop_text and stop_text in text:
            text = text.split(stop_text, 1)[0]
            yield text[len(shown) :]
            return
        ready = _without_partial_stop(text, stop_text)
        if not ready.endswith(REPLACEMENT) and len(ready) > len(shown):
            yield ready[len(shown) :]
            shown = ready
    text = tokenizer.decode(new)
    if len(text) > len(shown):
        yield text[len(shown) :]


def _without_partial_stop(text: str, stop: Optional[str]) -> str:
    """`text` less any ending that could be the start of `stop` (held back until it is decided)."""
    if stop:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                return text[:-size]
    return text


def converse(model: Decoder, tokenizer: Tokenizer, template: Template, lines: TextIO, write: Callable[[str], None],
             system: Optional[str], settings: dict, seed: int, ask: Callable[[], None] = lambda: None) -> int:
    """Read user lines until `/quit` or the end of input, answer each; return the number of replies."""
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    stops = stop_ids(tokenizer, template)
    stop_text = template.stop if template.stop and len(tokenizer.encode(template.stop)) != 1 else None
    start = [{"role": "system", "content": system}] if system else []
    messages, replies = list(start), 0
    while True:
        ask()
        line = lines.readline()
        if not line or line.strip() == "/quit":
            return replies
        if line.strip() == "/reset":
            messages = list(start)
            write("(new conversation)\n")
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        try:
            ids = prompt_ids(tokenizer, messages, template, model.config.block_size, settings["max_new_tokens"])
        except PipelineError as exc:
            write(f"(error: {exc})\n")
            messages.pop()
            continue
        pieces = []
        for piece in stream_reply(model, tokenizer, ids, stops, stop_text, generator=generator, **settings):
            write(piece)
            pieces.append(piece)
        write("\n")
        messages.append({"role": "assistant", "content": "".join(pieces)})
        replies += 1


def build_parser(prog: str = "python -m model.chat") -> argparse.ArgumentParser:
    p = command_parser(__doc__, prog)
    p.add_argument("--checkpoint", type=Path, default=Path("data/finetuned"), help="model folder (default data/finetuned)")
    p.add_argument("--vocab", type=Path, default=Path("data/vocab"), help="tokenizer folder when the checkpoint has none")
    p.add_argument("--template", choices=sorted(TEMPLATES), help="template when the model has none of its own")
    p.add_argument("--system", help="a system message opening every conversation")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    return p


@cli
def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m model.chat") -> None:
    args = build_parser(prog).parse_args(argv)
    if args.max_new_tokens < 1:
        raise PipelineError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    tokenizer_dir = tokenizer_folder(args.checkpoint, args.vocab, "pass --vocab DIR")
    template = chat_template(args.checkpoint, tokenizer_dir, args.template)
    tokenizer = load_tokenizer(tokenizer_dir)
    device = resolve_device(args.device)
    model = load_any(args.checkpoint, map_location=device).eval()
    if tokenizer.vocab_size > model.config.vocab_size:
        raise PipelineError(f"{tokenizer_dir}: {tokenizer.vocab_size} tokens, more than the model's {model.config.vocab_size}")
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chat with {args.checkpoint} ({template.name} template); /reset for a new conversation, /quit to leave")

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    settings = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    converse(model, tokenizer, template, sys.stdin, write, args.system, settings, args.seed,
             ask=(lambda: write("> ")) if interactive else (lambda: None))


if __name__ == "__main__":
    main()
