"""Generation: KV cache equals no cache, sampling filters, EOS stop, the CLI and sample_texts."""

import json
import os
import subprocess
import sys

import pytest
import torch

from model.decoder import sample_next
from model.folders import load_any
from model.generate import encode_prompt, main, sample_texts
from model.gpt import GPT, GPTConfig
from pipeline.errors import PipelineError
from pipeline.tokenizer import load_tokenizer
from tests.helpers import save_model, write_char_vocab

CHARS = "abcdefgh \n"


def tiny(vocab_size=37, block_size=16) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32)).eval()
    with torch.no_grad():  # peakier than the 0.02 init: top-k and top-p then matter
        model.lm_head.weight.mul_(5)
    return model


@pytest.mark.parametrize(
    "settings",
    [dict(temperature=1.0), dict(temperature=0.8, top_k=5), dict(temperature=1.2, top_p=0.7), dict(temperature=0.0)],
)
def test_cache_gives_the_same_tokens_as_no_cache(settings):
    model = tiny()
    prompt = torch.randint(0, 37, (3, 5))
    runs = []
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(42)
        # 30 new tokens overrun block_size 16: exercises the full-cache fallback too
        runs.append(model.generate(prompt, 30, generator=gen, use_cache=use_cache, **settings))
    assert runs[0].shape == (3, 35)
    assert torch.equal(runs[0][:, :5], prompt)
    assert torch.equal(runs[0], runs[1])
    if settings["temperature"]:
        other = model.generate(prompt, 30, generator=torch.Generator().manual_seed(7), **settings)
        assert not torch.equal(other, runs[0])


def test_cached_steps_match_full_forward_logits():
    model = tiny()
    idx = torch.randint(0, 37, (2, 12))
    full, _ = model(idx)
    caches = model._new_caches()
    with torch.no_grad():
        x = model._hidden(idx[:, :7], torch.arange(7), caches=caches)
        steps = [model.lm_head(x)]
        for t in range(7, 12):
            x = model._hidden(idx[:, t : t + 1], torch.tensor([t]), is_causal=False, caches=caches)
            steps.append(model.lm_head(x))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_greedy_follows_argmax_of_the_cropped_window():
    model = tiny()
    idx = torch.randint(0, 37, (1, 4))
    out = model.generate(idx, 20, temperature=0)
    for t in range(4, 24):
        logits, _ = model(out[:, max(0, t - 16) : t])
        assert out[0, t].item() == logits[0, -1].argmax().item()


def test_top_k_and_top_p_filter():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=gen).flatten().tolist()) == {0, 1}
    probs = torch.softmax(logits[0], -1)  # p0 ~ 0.64, p0 + p1 ~ 0.87
    assert set(sample_next(logits, 1.0, top_p=0.8, generator=gen).flatten().tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, top_p=0.5, generator=gen).flatten().tolist()) == {0}
    assert len(set(sample_next(logits, 1.0, generator=gen).flatten().tolist())) >= 5
    assert probs[0] < 0.8 < probs[:2].sum()
    with pytest.raises(PipelineError, match="top_p"):
        tiny().generate(torch.zeros(1, 1, dtype=torch.long), 1, top_p=1.5)


def test_stops_at_eos():
    model = tiny()
    idx = torch.randint(0, 37, (2, 4))
    greedy = model.generate(idx, 6, temperature=0)
    eos = greedy[0, 4].item()
    out = model.generate(idx[:1], 6, temperature=0, eos_id=eos)
    assert out.shape == (1, 5) and out[0, -1].item() == eos
    out = model.generate(idx, 6, temperature=0, eos_id=eos)
    row1 = greedy[1, 4:].tolist()
    if eos in row1:  # both finished early: stops at the later EOS
        assert out.shape[1] == 4 + row1.index(eos) + 1
    else:  # row 0 is padded with EOS while row 1 runs on
        assert torch.equal(out[1], greedy[1]) and (out[0, 4:] == eos).all()


def test_stops_at_any_of_several_stop_ids():
    model = tiny()
    idx = torch.randint(0, 37, (1, 4))
    greedy = model.generate(idx, 8, temperature=0)[0, 4:].tolist()
    first, third = greedy[0], greedy[2]
    never = next(i for i in range(37) if i not in greedy)
    out = model.generate(idx, 8, temperature=0, eos_id=[never, third])[0, 4:].tolist()
    assert out == greedy[: greedy.index(third) + 1]
    assert model.generate(idx, 8, temperature=0, eos_id=[never, first]).shape == (1, 5)


@pytest.fixture
def char_checkpoint(tmp_path):
    vocab = write_char_vocab(tmp_path / "vocab", CHARS)
    model = tiny(vocab_size=len(CHARS) + 2, block_size=32)
    save_model(model, tmp_path / "ckpt", vocab)
    return tmp_path / "ckpt"


def test_generate_cli(char_checkpoint, capsys):
    main(["--checkpoint", str(char_checkpoint), "--prompt", "abc", "--max-new-tokens", "12", "--num-samples", "3", "--seed", "1"])
    out = capsys.readouterr().out
    samples = out.split("\n---------------\n")
    assert len(samples) == 3
    for s in samples:
        assert s.startswith("abc") and set(s.rstrip("\n")) <= set(CHARS) and len(s.rstrip("\n")) <= 15
    main(["--checkpoint", str(char_checkpoint), "--prompt", "abc", "--max-new-tokens", "12", "--num-samples", "3", "--seed", "1"])
    assert capsys.readouterr().out == out  # seeded

    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(char_checkpoint), "--prompt", "abz!"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'!', 'z'" in err and err.count("\n") == 1

    with pytest.raises(SystemExit):
        main(["--checkpoint", str(char_checkpoint), "--prompt", "a" * 33])
    assert "longer than the model's context of 32" in capsys.readouterr().err


def test_generate_cli_module_and_vocab_flag(char_checkpoint, tmp_path, capsys):
    no_tokenizer = tmp_path / "no_tokenizer"  # like a Hugging Face folder: the tokenizer comes from --vocab
    save_model(load_any(char_checkpoint), no_tokenizer)
    args = ["--checkpoint", str(no_tokenizer), "--prompt", "ab", "--max-new-tokens", "5"]
    with pytest.raises(SystemExit):
        main(args + ["--vocab", str(tmp_path / "nowhere")])
    assert "pass --vocab DIR" in capsys.readouterr().err
    run = [sys.executable, "-m", "model.generate", *args, "--vocab", str(tmp_path / "vocab")]
    done = subprocess.run(run, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ab") and len(done.stdout.rstrip("\n")) <= 7


def test_sample_texts(char_checkpoint):
    model = load_any(char_checkpoint)
    tok = load_tokenizer(char_checkpoint / "tokenizer")
    texts = sample_texts(model, tok, ["ab", ""], n=2, max_new_tokens=10, temperature=1.0, top_k=None, top_p=None, seed=3)
    assert len(texts) == 4 and texts[0].startswith("ab") and texts[1].startswith("ab")
    assert all("<|endoftext|>" not in t for t in texts)
    again = sample_texts(model, tok, ["ab", ""], n=2, max_new_tokens=10, temperature=1.0, top_k=None, top_p=None, seed=3)
    assert again == texts
    small = tiny(vocab_size=5)
    with pytest.raises(PipelineError, match="only 5"):
        sample_texts(small, tok, ["ab"], 1, 5, 1.0, None, None, 0)


def test_sample_texts_and_the_cli_stop_at_the_template_stop_token(char_checkpoint, capsys):
    """A template whose stop string is one token of the tokenizer: generation ends at that token."""
    from model.templates import Template, render_prompt, stop_ids

    model, tok = load_any(char_checkpoint), load_tokenizer(char_checkpoint / "tokenizer")
    free = sample_texts(model, tok, ["abc"], 1, 20, 1.0, None, None, 5)[0][3:]  # seeded: the same path until a stop
    stop = next(c for c in free[2:] if c not in free[:2])  # a character the reply reaches after a few others
    template = Template(name="test", user="{content}", stop=stop)
    assert stop_ids(tok, template) == [int(tok.encode(stop)[0]), tok.eos_id]
    stopped = sample_texts(model, tok, [render_prompt("abc", None, template)], 1, 20, 1.0, None, None, 5, stop_ids(tok, template))
    assert stopped == ["abc" + free[: free.index(stop)]]
    (char_checkpoint / "template.json").write_text(json.dumps(template.to_dict()))
    main(["--checkpoint", str(char_checkpoint), "--instruction", "abc", "--temperature", "1", "--seed", "5", "--max-new-tokens", "20"])
    assert capsys.readouterr().out == free[: free.index(stop)] + "\n"


def test_prompts_start_with_bos_once_when_documents_do(tmp_path):
    from pipeline.config import TokenizerConfig
    from pipeline.tokenizer import load_tokenizer
    from pipeline.vocab import build_vocab
    from tests.helpers import write_hf_model_tokenizer

    folder = write_hf_model_tokenizer(tmp_path / "m", sentencepiece=True)
    build_vocab(TokenizerConfig(name="hf", path=str(folder)), [], tmp_path / "vocab")
    tok = load_tokenizer(tmp_path / "vocab")
    ids = encode_prompt(tok, "the cat", 64)
    assert ids[0] == tok.bos_id and ids[1:] == tok.encode("the cat").tolist()
    assert encode_prompt(tok, "<s>[INST] the cat", 64).count(tok.bos_id) == 1, "a template's own <s> is the BOS"
