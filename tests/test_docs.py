"""The docs cannot rot: the README stays short, every link resolves, the params reference is what
the code generates, every command in a guide parses with the real options and names real params
keys, and every command of docs/models.md (the bring-your-own-model walk-through) runs."""

from __future__ import annotations

import dataclasses
import importlib
import json
import re
import shlex
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from pipeline.config import Params
from pipeline.reference import REFERENCE_FILE, reference
from tests.helpers import REPO
from tests.test_dvc_pipeline import TINY_PARAMS, make_repo, run
from tinygpt.cli import COMMANDS

DOCS = sorted([REPO / "README.md", *(REPO / "docs").glob("*.md")])
SKIP = "<!-- docs-test: skip"


def blocks(path: Path, language: str) -> list[str]:
    """The fenced blocks of `language` in a markdown file, less those marked `<!-- docs-test: skip ... -->`."""
    found = re.finditer(rf"(<!--[^\n]*-->\n)?```{language}\n(.*?)```", path.read_text(), re.S)
    return [m.group(2) for m in found if not (m.group(1) or "").startswith(SKIP)]


def commands(path: Path) -> list[str]:
    """The shell commands of a file's ```sh blocks, comments dropped."""
    out = []
    for block in blocks(path, "sh"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip() if not line.lstrip().startswith("#") else ""
            if line:
                out.append(line)
    return out


def test_the_readme_is_short_and_every_link_resolves():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            assert (doc.parent / target).exists(), f"{doc.relative_to(REPO)}: link to {target} does not resolve"


def test_the_params_reference_is_up_to_date():
    assert (REPO / REFERENCE_FILE).read_text() == reference(), "stale: run `python -m pipeline.reference --write`"


def params_key_exists(key: str) -> bool:
    """Whether a dotted key names a params field (any name inside sources, snapshots, mix.weights)."""
    cls, parts = Params, key.lstrip("+").split(".")
    while parts:
        part = parts.pop(0)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return False
        hint = typing.get_type_hints(cls)[part]
        if typing.get_origin(hint) is dict:
            if not parts:
                return True
            parts.pop(0)  # the entry's name
            inner = typing.get_args(hint)[1]
            if not dataclasses.is_dataclass(inner):
                return not parts
            cls = inner
            continue
        inner = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        if dataclasses.is_dataclass(hint) or inner:
            cls = hint if dataclasses.is_dataclass(hint) else inner[0]
        elif parts:
            return False
    return True


def test_every_guide_command_parses_and_names_real_params_keys():
    checked = 0
    for doc in DOCS:
        for line in commands(doc):
            words = shlex.split(line)
            sets = [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-S", "--set")]
            for pair in sets:
                key = pair.split("=", 1)[0]
                assert params_key_exists(key), f"{doc.name}: `{line}` sets unknown params key {key}"
            if words[0] == "tinygpt" and len(words) > 1 and words[1] in COMMANDS:
                parser = importlib.import_module(COMMANDS[words[1]][0]).build_parser(f"tinygpt {words[1]}")
                try:
                    parser.parse_args(words[2:])
                except SystemExit:
                    pytest.fail(f"{doc.name}: `{line}` does not parse")
                checked += 1
            elif words[0] == "tinygpt":
                pytest.fail(f"{doc.name}: `{line}`: no such tinygpt command")
    assert checked >= 10, "the guides show the tinygpt commands"
    assert params_key_exists("mix.weights.code") and params_key_exists("sources.web.path") and not params_key_exists("train.lr_max")


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def write_smollm2_like(folder: Path) -> None:
    """A model folder shaped like SmolLM2-135M-Instruct as transformers 5 writes it (Llama layout,
    byte-level BPE, chat template in chat_template.jinja), two layers 32 wide."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = ["note 1.2: the cat sat on mat 3", "record 5 says abab", "What does a DVC stage do?"] * 20
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                                              "tokenizer_class": "PreTrainedTokenizerFast"}))
    (folder / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)


def test_the_bring_your_own_model_walkthrough_runs(tmp_path):
    """docs/models.md, every command in order, on a tiny SmolLM2-shaped folder (built instead of fetched)."""
    repo = make_repo(tmp_path / "project", {**TINY_PARAMS, "wandb": {"mode": "disabled"}})
    write_smollm2_like(repo / "models" / "SmolLM2-135M-Instruct")  # git ignores models/: nothing to commit
    doc = REPO / "docs" / "models.md"
    lines = commands(doc)
    assert lines[0].startswith("tinygpt fetch HuggingFaceTB/SmolLM2-135M-Instruct"), "step 1 fetches"
    assert not any(line.startswith("dvc exp run -n smol-full") for line in lines), "the hours-long run is skipped"
    for line in lines[1:]:
        stdin = "What does a DVC stage do?\nAnd then?\n" if line.startswith("tinygpt chat") else None
        done = subprocess.run(line, shell=True, cwd=repo, capture_output=True, text=True, input=stdin)
        assert done.returncode == 0, f"`{line}` failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        if stdin:  # a tiny random model's replies are noise, but two of them come back, each ended by a line break
            assert done.stdout.count("\n") >= 2 and done.stdout.endswith("\n")
    exported = repo / "export" / "smol-chat"
    assert (exported / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert json.loads((exported / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    template = json.loads((repo / "data" / "finetuned" / "template.json").read_text())
    assert template["name"] == "model" and template["stop"] == "<|im_end|>"
    (python_block,) = blocks(doc, "python")
    done = subprocess.run([sys.executable, "-c", python_block], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("assistant "), done.stderr[-2000:]
    assert "smol" in run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()
