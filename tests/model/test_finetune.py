"""Instruction fine-tuning: template, records, loss mask, padding, training, checkpoints, the generate CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from model.finetune import finetune, lr_at
from model.records import Record, collate, encode_example, encode_records, load_records
from model.templates import (
    CHATML, DEFAULT_TEMPLATE, TEMPLATES, get_template, load_template, render_prompt, render_segments, stop_ids,
)
from model.config import FinetuneConfig, LoraConfig
from model.folders import load_any
from model.gpt import GPT, GPTConfig
from pipeline.config import load_params
from pipeline.errors import ConfigError, PipelineError
from pipeline.tokenizer import EOS_TEXT, load_tokenizer
from tests.helpers import REPO, save_model, write_byte_vocab, write_char_vocab

RECORDS = [
    {"instruction": "reverse a list", "output": "items[::-1]"},
    {"instruction": "last item", "output": "items[-1]"},
    {"instruction": "join with commas", "input": "names", "output": "', '.join(names)"},
]
CHARS = DEFAULT_TEMPLATE.user_with_input + DEFAULT_TEMPLATE.assistant + "".join(v for r in RECORDS for v in r.values()) + "abcdefghijklmnopqrstuvwxyz .,"
BLOCK = 96


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def tiny_checkpoint(folder: Path, block_size: int = BLOCK, vocab: Path | None = None) -> Path:
    """A cpu-tiny sized model with a char tokenizer (or `vocab`), saved as this project's checkpoint folder."""
    vocab = vocab or write_char_vocab(folder.parent / f"{folder.name}-vocab", CHARS)
    tok = load_tokenizer(vocab)
    torch.manual_seed(0)
    save_model(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=64)), folder, vocab)
    return folder


def config(tmp_path: Path, init_from: Path, **overrides) -> FinetuneConfig:
    settings = dict(
        data=str(write_jsonl(tmp_path / "records.jsonl", RECORDS)),
        init_from=str(init_from),
        vocab=str(tmp_path / "no-vocab"),
        epochs=60,
        batch_size=3,
        lr=3e-3,
        min_lr=3e-4,
        warmup_iters=5,
        weight_decay=0.0,
        device="cpu",
    )
    settings.update(overrides)
    return FinetuneConfig(**settings)


def greedy_response(model: GPT, tok, instruction: str, input: str | None = None) -> str:
    ids = tok.encode(render_prompt(instruction, input))
    out = model.generate(torch.from_numpy(ids.astype(np.int64))[None], 40, temperature=0, eos_id=tok.eos_id)[0, len(ids) :].tolist()
    return tok.decode(out[: out.index(tok.eos_id)] if tok.eos_id in out else out)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """Fine-tune a tiny model once on the three records; shared by the tests that read the result."""
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("ft")
    cfg = config(tmp, tiny_checkpoint(tmp / "base"))
    lines: list[str] = []
    metrics = finetune(cfg, seed=3, out_dir=tmp / "finetuned", print_fn=lines.append)
    return tmp / "finetuned", metrics, lines


# ---- template and encoding -------------------------------------------------------------------------


def test_render_prompt():
    assert render_prompt("Say hi.") == "### Instruction:\nSay hi.\n\n### Response:\n"
    assert render_prompt("Fix it.", "x = 1") == "### Instruction:\nFix it.\n\n### Input:\nx = 1\n\n### Response:\n"
    assert render_prompt("Say hi.", "  ") == render_prompt("Say hi.", None) == render_prompt(" Say hi.\n")


def test_loss_mask_covers_exactly_the_response_and_eos(tmp_path):
    tok = load_tokenizer(write_char_vocab(tmp_path / "vocab", CHARS))
    record = Record(instruction="join with commas", input="names", output="', '.join(names)")
    ids, mask = encode_example(tok, record)
    prompt = render_prompt(record.instruction, record.input)
    assert tok.decode(ids) == prompt + record.output + EOS_TEXT
    assert mask.sum() == len(record.output) + 1
    assert not mask[: len(prompt)].any() and mask[len(prompt) :].all()
    assert tok.decode(ids[mask]) == record.output + EOS_TEXT
    cut_ids, cut_mask = encode_example(tok, record, max_len=len(prompt) + 3)  # truncation keeps the start
    assert np.array_equal(cut_ids, ids[: len(prompt) + 3]) and cut_mask.sum() == 3


def test_long_records_are_cut_or_skipped_and_reported(tmp_path):
    tok = load_tokenizer(write_char_vocab(tmp_path / "vocab", CHARS))
    fits = Record("last item", "items[-1]", where="f: line 1")
    long = Record("last item", "items[-1]" * 10, where="f: line 2")
    hopeless = Record("reverse a list " * 10, "items[::-1]", where="f: line 3")
    enc = encode_records(tok, [fits, long, hopeless], max_len=BLOCK + 1)
    assert len(enc.examples) == 2 and enc.truncated == ["f: line 2"] and enc.skipped == ["f: line 3"]
    assert all(len(ids) <= BLOCK + 1 for ids, _ in enc.examples)
    assert not enc.unknown_chars
    assert encode_records(tok, [Record("say Q", "ok!")], 50).unknown_chars == {"Q", "!"}


def test_padding_is_masked_and_never_counted(tmp_path):
    tok = load_tokenizer(write_char_vocab(tmp_path / "vocab", CHARS))
    examples = [encode_example(tok, Record(**r)) for r in RECORDS]
    batch = collate(examples, tok.pad_id)
    lengths = [len(ids) - 1 for ids, _ in examples]
    assert batch["inputs"].shape == (3, max(lengths))
    for row, n in enumerate(lengths):
        assert not batch["loss_mask"][row, n:].any()
        assert (batch["inputs"][row, n:] == tok.pad_id).all()
        assert batch["loss_mask"][row].sum() == examples[row][1][1:].sum()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=2, n_head=2, n_embd=64))
    _, loss = model(batch["inputs"], targets=batch["targets"], loss_mask=batch["loss_mask"])
    other = {k: v.clone() for k, v in batch.items()}
    for row, n in enumerate(lengths):  # whatever sits in the padding, the loss is the same
        other["inputs"][row, n:] = 5
        other["targets"][row, n:] = 7
    _, loss2 = model(other["inputs"], targets=other["targets"], loss_mask=other["loss_mask"])
    sums = []
    for ids, mask in examples:  # token-weighted mean of the unpadded examples
        one = collate([(ids, mask)], tok.pad_id)
        _, l1 = model(one["inputs"], targets=one["targets"], loss_mask=one["loss_mask"])
        sums.append((float(l1.detach()) * int(one["loss_mask"].sum()), int(one["loss_mask"].sum())))
    expected = sum(s for s, _ in sums) / sum(n for _, n in sums)
    assert abs(loss.item() - expected) < 1e-5 and abs(loss2.item() - expected) < 1e-5


def test_schedule_warms_up_then_decays_to_min_lr():
    cfg = FinetuneConfig(lr=1e-3, min_lr=1e-4, warmup_iters=3)
    lrs = [lr_at(s, 20, cfg) for s in range(20)]
    assert lrs[0] < lrs[1] < lrs[2] < lrs[3] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert lrs[-1] == pytest.approx(1e-4)


# ---- records -----------------------------------------------------------------------------------------


def test_project_instruction_set_loads():
    records = load_records(REPO / "data" / "instructions.jsonl")
    assert len(records) >= 30
    assert any(r.input for r in records) and any(r.input is None for r in records)


@pytest.mark.parametrize(
    "lines, where, problem",
    [
        (['{"instruction": "a", "output": "b"}', '{"instruction": "a", "output": "b"'], "line 2", "not valid JSON"),
        (['{"instruction": "a", "output": "b"}', "", '["a", "b"]'], "line 3", "must be a JSON object"),
        (['{"input": "x", "output": "b"}'], "line 1", "missing 'instruction'"),
        (['{"instruction": "a", "response": "b"}'], "line 1", "missing 'output'"),
        (['{"instruction": "a", "output": 42}'], "line 1", "'output' must be a string"),
        (['{"instruction": "a", "input": ["x"], "output": "b"}'], "line 1", "'input' must be a string"),
        (['{"instruction": null, "output": "b"}'], "line 1", "'instruction' must be a string"),
        (['{"instruction": "a", "output": "  "}'], "line 1", "'output' is empty"),
    ],
)
def test_malformed_jsonl_records_are_named(tmp_path, lines, where, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PipelineError) as error:
        load_records(path)
    message = str(error.value)
    assert message.startswith(f"{path}: {where}: ") and problem in message and "\n" not in message


@pytest.mark.parametrize(
    "content, problem",
    [
        ('[{"instruction": "a", "output": "b"}, {"instruction": "a"}]', "record 2: missing 'output'"),
        ('[{"instruction": "a", "output": "b"}, 3]', "record 2: a record must be a JSON object"),
        ('{"instruction": "a", "output": "b"}', "must hold a list"),
        ('[{"instruction": "a", "output": "b"},', "not valid JSON"),
        ("[]", "no records"),
    ],
)
def test_malformed_json_files_are_named(tmp_path, content, problem):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(PipelineError, match=problem) as error:
        load_records(path)
    assert str(error.value).startswith(str(path)) and "\n" not in str(error.value)


def test_json_list_and_other_files(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(RECORDS))
    assert [r.output for r in load_records(path)] == [r["output"] for r in RECORDS]
    assert load_records(path)[2].where == f"{path}: record 3"
    with pytest.raises(PipelineError, match="not found"):
        load_records(tmp_path / "missing.jsonl")
    with pytest.raises(PipelineError, match=r"\.json or \.jsonl"):
        load_records(tmp_path / "records.csv")


# ---- training and the checkpoint ----------------------------------------------------------------------


def test_finetuned_model_answers_through_the_template(finetuned):
    out, metrics, lines = finetuned
    assert metrics["loss_after"] < 0.1 * metrics["loss_before"]
    assert metrics["train_loss_epoch_60"] < metrics["train_loss_epoch_1"] and metrics["train_loss"] == metrics["train_loss_epoch_60"]
    assert metrics["records"] == 3 and metrics["steps"] == 60 and metrics["truncated"] == 0
    assert sum("train loss" in line for line in lines) == 60
    model, tok = load_any(out), load_tokenizer(out / "tokenizer")
    for record in RECORDS:
        assert greedy_response(model, tok, record["instruction"], record.get("input")) == record["output"]


def test_output_folder_is_complete(finetuned):
    out, _, _ = finetuned
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "model_config.json", "template.json", "tokenizer"]
    assert (out / "tokenizer" / "chars.json").is_file()
    assert load_template(out) == DEFAULT_TEMPLATE
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_generate_cli_with_instruction(finetuned, tmp_path):
    out, _, _ = finetuned
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "model.generate", "--checkpoint", str(out), "--temperature", "0", "--max-new-tokens", "40"]
    done = subprocess.run(args + ["--instruction", "join with commas", "--input", "names"], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "', '.join(names)\n"


def test_generate_instruction_flags_need_a_template(finetuned, tmp_path, capsys):
    from model.generate import main

    out, _, _ = finetuned
    plain = tmp_path / "plain"
    save_model(load_any(out), plain, out / "tokenizer")
    for argv, message in [
        (["--checkpoint", str(plain), "--instruction", "last item"], "template.json: not found"),
        (["--checkpoint", str(out), "--input", "names"], "--input needs --instruction"),
        (["--checkpoint", str(out), "--prompt", "x", "--instruction", "last item"], "not both"),
    ]:
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err
    main(["--checkpoint", str(out), "--instruction", "last item", "--temperature", "0", "--max-new-tokens", "30"])
    assert capsys.readouterr().out == "items[-1]\n"


def test_finetune_from_a_hugging_face_folder(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    vocab = write_char_vocab(tmp_path / "vocab", CHARS)
    tok = load_tokenizer(vocab)
    torch.manual_seed(0)
    hf_config = GPT2Config(vocab_size=tok.vocab_size, n_positions=BLOCK, n_embd=64, n_layer=2, n_head=2,
                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(hf_config).save_pretrained(tmp_path / "hf", safe_serialization=True)
    cfg = config(tmp_path, tmp_path / "hf", vocab=str(vocab), epochs=40)
    metrics = finetune(cfg, seed=1, out_dir=tmp_path / "out", print_fn=lambda *_: None)
    assert metrics["loss_after"] < 0.2 * metrics["loss_before"]
    model = load_any(tmp_path / "out")
    assert model.config.vocab_size == tok.vocab_size and model.config.block_size == BLOCK
    assert json.loads((tmp_path / "out" / "tokenizer" / "chars.json").read_text()) == json.loads((vocab / "chars.json").read_text())
    assert greedy_response(model, tok, "last item") == "items[-1]"


def test_hugging_face_folder_needs_a_vocab(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path / "hf")
    with pytest.raises(PipelineError, match="set finetune.vocab"):
        finetune(config(tmp_path, tmp_path / "hf"), seed=1, out_dir=tmp_path / "out")


def test_errors_leave_nothing_half_written(tmp_path, monkeypatch):
    base = tiny_checkpoint(tmp_path / "base")
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    with pytest.raises(PipelineError, match="line 2"):
        finetune(config(tmp_path, base, data=str(bad)), seed=1, out_dir=out)
    assert not out.exists()
    with pytest.raises(PipelineError, match="is not a folder"):
        finetune(config(tmp_path, tmp_path / "nowhere"), seed=1, out_dir=out)

    finetune(config(tmp_path, base, epochs=1), seed=1, out_dir=out, print_fn=lambda *_: None)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def broken_copy(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copytree", broken_copy)  # fails midway through writing the folder
    with pytest.raises(OSError, match="disk full"):
        finetune(config(tmp_path, base, epochs=2), seed=1, out_dir=out, print_fn=lambda *_: None)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # the old output, intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_same_seed_same_weights(tmp_path):
    base = tiny_checkpoint(tmp_path / "base")
    runs = []
    for name in ("a", "b"):
        finetune(config(tmp_path, base, epochs=3, batch_size=2), seed=5, out_dir=tmp_path / name, print_fn=lambda *_: None)
        runs.append((tmp_path / name / "model.safetensors").read_bytes())
    assert runs[0] == runs[1]


# ---- templates -------------------------------------------------------------------------------------------

SPECIALS = ("<|im_start|>", "<|im_end|>", "<|eot_id|>", "</s>")
RECORD = Record(instruction="Fix it.", input="x = 1", output="x = 2")
PROMPTS = {  # the known record's prompt under each template; the reply "x = 2" and the stop follow it
    "tinygpt-instruct-v1": "### Instruction:\nFix it.\n\n### Input:\nx = 1\n\n### Response:\n",
    "alpaca": "Carry out the instruction below in your response.\n\n### Instruction:\nFix it.\n\n### Input:\nx = 1\n\n### Response:\n",
    "llama2": "<s>[INST] Fix it.\n\nx = 1 [/INST] ",
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nFix it.\n\nx = 1<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "chatml": "<|im_start|>user\nFix it.\n\nx = 1<|im_end|>\n<|im_start|>assistant\n",
}
LEARNED = {"tinygpt-instruct-v1": "x = 2" + EOS_TEXT, "alpaca": "x = 2" + EOS_TEXT, "llama2": "x = 2 </s>",
           "llama3": "x = 2<|eot_id|>", "chatml": "x = 2<|im_end|>"}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "1+1?"},
    {"role": "assistant", "content": "2"},
]
CHATML_JINJA = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_templates_render_the_known_record_and_learn_the_reply_and_stop(tmp_path):
    tok = load_tokenizer(write_byte_vocab(tmp_path / "vocab", SPECIALS))
    assert set(TEMPLATES) == set(PROMPTS)
    for name, prompt in PROMPTS.items():
        template = get_template(name)
        assert render_prompt(RECORD.instruction, RECORD.input, template) == prompt
        ids, mask = encode_example(tok, RECORD, template=template)
        assert tok.decode(ids) == prompt + LEARNED[name]
        assert tok.decode(ids[mask]) == LEARNED[name] and tok.decode(ids[~mask]) == prompt
        assert mask[-1] and ids[-1] == stop_ids(tok, template)[0]  # the stop is one token, and learned
        stop = tok.encode(template.stop)[0] if template.stop else tok.eos_id
        assert stop_ids(tok, template) == list(dict.fromkeys([stop, tok.eos_id]))


def test_a_stop_that_is_not_one_token_is_learned_as_text_then_eos(tmp_path):
    tok = load_tokenizer(write_char_vocab(tmp_path / "vocab", PROMPTS["chatml"] + "x = 2"))
    ids, mask = encode_example(tok, RECORD, template=CHATML)
    assert tok.decode(ids[mask]) == "x = 2<|im_end|>" + EOS_TEXT and ids[-1] == tok.eos_id
    assert stop_ids(tok, CHATML) == [tok.eos_id]


@pytest.mark.parametrize("name, learned", [
    ("chatml", "Hello.<|im_end|>2<|im_end|>"),
    ("llama2", "Hello. </s>2 </s>"),
    ("llama3", "Hello.<|eot_id|>2<|eot_id|>"),
    ("tinygpt-instruct-v1", f"Hello.{EOS_TEXT}2{EOS_TEXT}"),
])
def test_multi_turn_records_learn_every_assistant_turn_only(tmp_path, name, learned):
    tok = load_tokenizer(write_byte_vocab(tmp_path / "vocab", SPECIALS))
    record = Record(instruction="", output="", messages=CONVERSATION)
    ids, mask = encode_example(tok, record, template=get_template(name))
    assert tok.decode(ids[mask]) == learned
    prompt_text = tok.decode(ids[~mask])
    assert all(m["content"] in prompt_text for m in CONVERSATION if m["role"] != "assistant")
    assert "Hello." not in prompt_text
    if name == "llama2":  # the system prompt sits inside the first user turn
        assert tok.decode(ids).startswith("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] 1+1? [/INST] 2 </s>")


def test_model_chat_template_from_tokenizer_config(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    config = {"chat_template": CHATML_JINJA, "eos_token": {"content": "<|im_end|>"}, "bos_token": None}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    template = get_template("model", [tmp_path / "nothing-here", folder])
    assert template.stop == "<|im_end|>" and template.source == str(folder / "tokenizer_config.json")
    assert render_prompt(RECORD.instruction, RECORD.input, template) == PROMPTS["chatml"]
    for messages in (CONVERSATION, RECORD.conversation()):
        assert render_segments(messages, template) == render_segments(messages, CHATML)
    for source, problem in [
        ("{% for m in messages %}{{ m.content }}", "TemplateSyntaxError"),
        ("{{ messages.append(1) }}", "SecurityError"),
        ("{{ raise_exception('Conversation roles must alternate') }}", "roles must alternate"),
    ]:
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": source}))
        with pytest.raises(PipelineError, match=problem) as error:
            render_prompt("hi", None, get_template("model", [folder]))
        assert str(error.value).startswith(str(folder / "tokenizer_config.json")) and "\n" not in str(error.value)
    with pytest.raises(PipelineError, match=r"needs a chat template in .*tokenizer_config.json \('chat_template'\) or .*chat_template.jinja"):
        get_template("model", [tmp_path])


def test_the_first_template_format_still_loads(tmp_path):
    old = {"name": "tinygpt-instruct-v1", "prompt": "### Instruction:\n{instruction}\n\n### Response:\n",
           "prompt_with_input": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n", "response_ends_with": "eos"}
    (tmp_path / "template.json").write_text(json.dumps(old))
    template = load_template(tmp_path)
    for input in (None, "x = 1"):
        assert render_prompt("Fix it.", input, template) == render_prompt("Fix it.", input, DEFAULT_TEMPLATE)


def test_chatml_fine_tune_stops_at_its_special_token(tmp_path, capsys):
    """A byte-level tokenizer where <|im_end|> is one token: the model learns to emit it, generation stops there."""
    from model.generate import main

    base = tiny_checkpoint(tmp_path / "base", block_size=128, vocab=write_byte_vocab(tmp_path / "vocab", SPECIALS))
    torch.set_num_threads(1)
    metrics = finetune(config(tmp_path, base, template="chatml", epochs=40), seed=3, out_dir=tmp_path / "out", print_fn=lambda *_: None)
    assert metrics["loss_after"] < 0.15 * metrics["loss_before"]
    assert load_template(tmp_path / "out") == CHATML
    main(["--checkpoint", str(tmp_path / "out"), "--instruction", "join with commas", "--input", "names", "--temperature", "0"])
    assert capsys.readouterr().out == "', '.join(names)\n"
    model, tok = load_any(tmp_path / "out"), load_tokenizer(tmp_path / "out" / "tokenizer")
    prompt = torch.from_numpy(tok.encode(render_prompt("last item", None, CHATML)).astype(np.int64))[None]
    out = model.generate(prompt, 30, temperature=0, eos_id=stop_ids(tok, CHATML))[0, prompt.size(1) :].tolist()
    assert tok.decode(out) == "items[-1]<|im_end|>"  # stopped at the stop token, not at EOS


def test_fine_tune_with_the_model_chat_template(tmp_path, capsys):
    """A char tokenizer: <|im_end|> is several tokens, so the reply is learned with its text, then EOS."""
    from model.generate import main

    base = tiny_checkpoint(tmp_path / "base", block_size=128, vocab=write_char_vocab(tmp_path / "vocab", CHARS + PROMPTS["chatml"]))
    (base / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML_JINJA, "eos_token": "<|im_end|>"}))
    torch.set_num_threads(1)
    metrics = finetune(config(tmp_path, base, template="model", epochs=40), seed=3, out_dir=tmp_path / "out", print_fn=lambda *_: None)
    assert metrics["loss_after"] < 0.15 * metrics["loss_before"]
    template = load_template(tmp_path / "out")
    assert template.chat_template == CHATML_JINJA and template.stop == "<|im_end|>"
    main(["--checkpoint", str(tmp_path / "out"), "--instruction", "last item", "--temperature", "0", "--max-new-tokens", "30"])
    assert capsys.readouterr().out == "items[-1]\n"  # stopped at EOS, the stop text cut off


# ---- multi-turn records ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, problem",
    [
        ('{"messages": []}', "'messages' must be a non-empty list"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "message 1 must have a 'role'"),
        ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant"}]}', "message 2 must have a 'role'"),
        ('{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}', "no assistant turn"),
    ],
)
def test_malformed_conversations_are_named(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(PipelineError, match=problem) as error:
        load_records(path)
    assert str(error.value).startswith(f"{path}: line 1: ") and "\n" not in str(error.value)


def test_conversations_and_alpaca_records_mix(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [RECORDS[0], {"messages": CONVERSATION, "id": 7}])
    records = load_records(path)
    assert records[0].conversation() == [{"role": "user", "content": "reverse a list"}, {"role": "assistant", "content": "items[::-1]"}]
    assert records[1].conversation() == CONVERSATION


# ---- params -----------------------------------------------------------------------------------------


def test_params_section(tmp_path):
    params = load_params(REPO / "params.yaml")
    assert params.finetune.epochs == 2 and params.finetune.init_from == "data/model"
    assert FinetuneConfig().epochs == 2
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw["finetune"]) <= {f.name for f in dataclasses.fields(FinetuneConfig)}
    for key, value in [("epochs", 0), ("lr", -1.0), ("dropout", 1.5), ("batch_size", 0)]:
        bad = yaml.safe_load((REPO / "params.yaml").read_text())
        bad["finetune"][key] = value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=f"finetune.{key}"):
            load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("edit, key", [
    ({"template": "vicuna"}, "finetune.template"),
    ({"lora": {"rank": 0}}, "finetune.lora.rank"),
    ({"lora": {"alpha": 0}}, "finetune.lora.alpha"),
    ({"lora": {"dropout": 1.0}}, "finetune.lora.dropout"),
    ({"lora": {"targets": []}}, "finetune.lora.targets"),
    ({"lora": {"targets": ["c attn"]}}, "finetune.lora.targets"),
    ({"lora": {"rnak": 8}}, "finetune.lora.rnak"),
    ({"lora": [8]}, "finetune.lora"),
])
def test_template_and_lora_params_fail_at_load(tmp_path, edit, key):
    bad = yaml.safe_load((REPO / "params.yaml").read_text())
    bad["finetune"].update(edit)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as error:
        load_params(tmp_path / "params.yaml")
    assert "\n" not in str(error.value)


def test_lora_params_default_and_default_stays_full_fine_tuning(tmp_path):
    params = load_params(REPO / "params.yaml")
    assert params.finetune.lora is None and params.finetune.template == "tinygpt-instruct-v1"
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["finetune"]["lora"] = {}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert load_params(tmp_path / "params.yaml").finetune.lora == LoraConfig()
