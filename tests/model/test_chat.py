"""chat: the template a checkpoint chats with, multi-turn prompts as in training, replies streamed
piece by piece that add up to the plain generation, and the command on piped input."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch

from model.chat import chat_template, converse, prompt_ids, stream_reply
from model.gpt import GPT, GPTConfig
from model.records import encode_segments
from model.templates import CHATML, DEFAULT_TEMPLATE, render_segments, stop_ids
from pipeline.errors import PipelineError
from pipeline.tokenizer import load_tokenizer
from tests.helpers import REPO, save_model, write_char_vocab

CHARS = "abcdefghijklmnopqrstuvwxyzIRS #:<>|_\n"


@pytest.fixture
def chatty(tmp_path):
    """A tiny char-level model, its tokenizer, and a checkpoint folder with a template.json."""
    vocab = write_char_vocab(tmp_path / "vocab", CHARS)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=len(CHARS) + 2, block_size=256, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)  # peaky logits: greedy replies that vary with the prompt
    folder = save_model(model, tmp_path / "ckpt", vocab)
    (folder / "template.json").write_text(json.dumps(CHATML.to_dict()))
    return model, load_tokenizer(vocab), folder


def test_the_checkpoints_own_template_comes_first(chatty, tmp_path):
    _, _, folder = chatty
    assert chat_template(folder, folder / "tokenizer", None).name == "chatml"
    (folder / "template.json").unlink()
    with pytest.raises(PipelineError, match="no template.json and no chat template of its own; pass --template"):
        chat_template(folder, folder / "tokenizer", None)
    assert chat_template(folder, folder / "tokenizer", "alpaca").name == "alpaca"
    (folder / "tokenizer" / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}|{% endfor %}")
    assert chat_template(folder, folder / "tokenizer", "alpaca").name == "model"
    (folder / "tokenizer" / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }")
    with pytest.raises(PipelineError, match=r"chat_template.jinja: chat_template: TemplateSyntaxError"):
        chat_template(folder, folder / "tokenizer", "alpaca")  # a broken template of its own is no reason to fall back


def test_prompts_and_fine_tuning_examples_start_with_bos_when_the_tokenizer_has_one(chatty):
    _, tok, _ = chatty
    segments = render_segments([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], CHATML)
    plain, _ = encode_segments(tok, segments)
    tok.bos_id = tok.encode("#")[0]  # as a Hugging Face tokenizer with a BOS token
    ids, mask = encode_segments(tok, segments)
    assert ids.tolist() == [tok.bos_id, *plain.tolist()] and not mask[0], "BOS first, and never a training target"
    assert prompt_ids(tok, [{"role": "user", "content": "hi"}], CHATML, 256, 40)[0] == tok.bos_id


def test_a_multi_turn_prompt_is_the_training_rendering_plus_the_reply_opening(chatty):
    _, tok, _ = chatty
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hey"}, {"role": "user", "content": "abc"}]
    for template in (DEFAULT_TEMPLATE, CHATML):
        ids = prompt_ids(tok, list(history), template, 256, 40)
        trained, _ = encode_segments(tok, render_segments(history[:2], template))
        assert ids[: len(trained)] == trained.tolist(), "earlier turns with their stop tokens, as fine-tuning saw them"
        assert tok.decode(ids[len(trained) :]).endswith(template.assistant)
    assert ids.count(tok.eos_id) == 1, "the DEFAULT template's reply ends with EOS; chatml's stop is text"


def test_the_oldest_turns_go_when_the_context_is_full(chatty):
    _, tok, _ = chatty
    messages = [{"role": "system", "content": "be kind"}]
    for i in range(6):
        messages += [{"role": "user", "content": f"question {'x' * 20}"}, {"role": "assistant", "content": "answer " * 3}]
    messages.append({"role": "user", "content": "last"})
    ids = prompt_ids(tok, messages, CHATML, 256, 40)
    assert len(ids) + 40 <= 256 and messages[0]["content"] == "be kind" and messages[-1]["content"] == "last"
    assert len(messages) < 14 and [m["role"] for m in messages[1:3]] == ["user", "assistant"]
    with pytest.raises(PipelineError, match="more than the model's context of 256"):
        prompt_ids(tok, [{"role": "user", "content": "y" * 300}], CHATML, 256, 40)
    lengths = {k: len(prompt_ids(tok, [{"role": "user", "content": "y" * k}], CHATML, 256, 1)) for k in range(0, 200, 5)}
    k = max(k for k, n in lengths.items() if 256 - 64 < n < 256)  # fits, but leaves less than a quarter for the reply
    with pytest.raises(PipelineError, match="with 64 for the reply"):
        prompt_ids(tok, [{"role": "user", "content": "y" * k}], CHATML, 256, 500)


def test_streamed_pieces_add_up_to_the_plain_generation(chatty):
    model, tok, _ = chatty
    ids = prompt_ids(tok, [{"role": "user", "content": "hello there"}], DEFAULT_TEMPLATE, 256, 40)
    stops = stop_ids(tok, DEFAULT_TEMPLATE)
    pieces = list(stream_reply(model, tok, ids, stops, None, 40, 0.0, None, None, torch.Generator()))
    out = model.generate(torch.tensor([ids]), 40, temperature=0, eos_id=stops)[0, len(ids) :].tolist()
    expected = tok.decode(out[: out.index(stops[0])] if stops[0] in out else out)
    assert len(pieces) > 1 and "".join(pieces) == expected
    held = list(stream_reply(model, tok, ids, stops, "<|im_end|>", 40, 0.0, None, None, torch.Generator()))
    assert "".join(held) == expected.split("<|im_end|>")[0]


def test_converse_answers_each_line_and_resets(chatty):
    model, tok, _ = chatty
    written: list[str] = []
    lines = io.StringIO("hello\n\n/reset\nabc\n/quit\nnever read\n")
    settings = dict(max_new_tokens=8, temperature=0.0, top_k=None, top_p=None)
    replies = converse(model, tok, CHATML, lines, written.append, "be kind", settings, seed=1)
    assert replies == 2 and "(new conversation)\n" in written and written[-1] == "\n"


def test_the_command_chats_on_piped_input(chatty):
    _, _, folder = chatty
    done = subprocess.run([sys.executable, "-m", "model.chat", "--checkpoint", str(folder), "--max-new-tokens", "6",
                           "--temperature", "0"], input="hello\nabc\n", cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 2 and "chat with" not in done.stdout, "no banner or prompt when input is piped"
