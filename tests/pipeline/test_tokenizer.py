from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pipeline.config import SourceConfig, SplitConfig, TokenizerConfig
from pipeline.errors import PipelineError
from pipeline.io import write_json
from pipeline.scan import scan_source
from pipeline.tokenizer import CharTokenizer, load_tokenizer, tokenizer_info, with_bos
from pipeline.vocab import GPT2_SHA256, build_vocab, tiktoken_spec
from tests.helpers import write_hf_model_tokenizer


def test_gpt2_loads_offline_and_matches_known_ids(gpt2_vocab, monkeypatch):
    import requests

    def no_network(*args, **kwargs):
        raise AssertionError("the tokenizer must not touch the network")

    monkeypatch.setattr(requests, "get", no_network)
    tok = load_tokenizer(gpt2_vocab)
    assert hashlib.sha256((gpt2_vocab / "ranks.tiktoken").read_bytes()).hexdigest() == GPT2_SHA256
    assert tok.encode("Hello world").tolist() == [15496, 995]
    assert (tok.vocab_size, tok.eos_id, tok.pad_id) == (50257, 50256, 50256)
    assert tok.encode("x").dtype == np.uint16
    text = "def f(x):\n    return x ** 2  # café ✓"
    assert tok.decode(tok.encode(text)) == text
    assert 50256 not in tok.encode("<|endoftext|>").tolist(), "a literal EOS string is ordinary text"


def test_whisper_fallback_gives_the_same_file(monkeypatch, tmp_path):
    """With tiktoken's download failing and no cache, the sdist on the package index is used."""
    import pipeline.vocab as vocab

    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))

    def offline():
        raise ConnectionError("no network")

    monkeypatch.setattr(vocab, "_gpt2_from_tiktoken", offline)
    data = vocab.gpt2_ranks_bytes()
    assert hashlib.sha256(data).hexdigest() == GPT2_SHA256
    assert (tmp_path / "cache" / "gpt2.tiktoken").read_bytes() == data


def test_gpt2_fails_cleanly_when_nothing_works(monkeypatch, tmp_path):
    import pipeline.vocab as vocab

    monkeypatch.setenv("TINYGPT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(vocab, "_gpt2_from_tiktoken", lambda: b"wrong")

    def no_index():
        raise OSError("no index")

    monkeypatch.setattr(vocab, "_gpt2_from_whisper_sdist", no_index)
    with pytest.raises(PipelineError, match="tokenizer.name=gpt2"):
        build_vocab(TokenizerConfig(name="gpt2"), [], tmp_path / "vocab")
    assert not (tmp_path / "vocab").exists(), "no half-written output"


def test_char_vocab_from_the_scans_of_the_sources(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.txt").write_text("wor\n\nld!")
    char = TokenizerConfig(name="char")
    scans = []
    for name, cfg in (("a", SourceConfig(format="text", path=str(tmp_path / "a.txt"))),
                      ("b", SourceConfig(format="text", path=str(tmp_path / "b.txt"), document="paragraph"))):
        scans.append(tmp_path / "scan" / name)
        scan_source(name, cfg, char, SplitConfig(), scans[-1], workers=2)
    stub = scan_source("a", SourceConfig(format="text", path="nowhere"), TokenizerConfig(name="gpt2"), SplitConfig(), tmp_path / "stub", 1)
    assert stub == {"tokenizer": "gpt2"}
    build_vocab(char, scans, tmp_path / "vocab")
    tok = load_tokenizer(tmp_path / "vocab")
    assert isinstance(tok, CharTokenizer)
    assert tok.chars == "!dehlorw"
    assert tok.vocab_size == len("!dehlorw") + 2
    ids = tok.encode("hello?")
    assert ids[-1] == tok.UNK_ID and tok.UNK_ID not in ids[:-1].tolist()
    assert tok.decode(tok.encode("world")) == "world"
    assert tok.unknown_chars("hey?") == {"y", "?"}
    assert tokenizer_info(tmp_path / "vocab") == {"tokenizer": "char", "vocab_size": 10, "eos_id": 0, "pad_id": 0}
    assert tok.token_bytes().tolist() == [0, 1] + [1] * 8
    write_json(tmp_path / "scan" / "a" / "scan.json", {"tokenizer": "gpt2"})
    with pytest.raises(PipelineError, match="not char"):
        build_vocab(char, scans, tmp_path / "vocab2")


BATCHES = [
    ["hello  ", "  world", "\n\n", "x"],  # whitespace at the joins must not merge across texts
    ["a <|endoftext|> b", "c"],  # the EOS text inside a text is ordinary text
    ["<|endof", "text|>"],  # ... and the join must not make one
    ["caf\udce9", "ok\ud800"],  # lone surrogates
    ["", "a", "\t"],
    ["x"] * 3,
]


@pytest.mark.parametrize("texts", BATCHES)
def test_encode_batch_equals_encode_text_by_text(gpt2_vocab, texts):
    for tok in (load_tokenizer(gpt2_vocab), CharTokenizer("abcx \n")):
        tokens, lengths = tok.encode_batch(texts)
        expected = [tok.encode(t).tolist() for t in texts]
        assert lengths.tolist() == [len(e) for e in expected]
        assert tokens.tolist() == [i for e in expected for i in e] and tokens.dtype == np.uint16


def test_token_bytes_add_up_to_the_utf8_size(gpt2_vocab):
    tok = load_tokenizer(gpt2_vocab)
    sizes = tok.token_bytes()
    text = "naïve café — ☕ costs 3€\n\tdef f(): pass"
    assert int(sizes[tok.encode(text)].sum()) == len(text.encode("utf-8"))
    assert sizes[tok.eos_id] == 0 and len(sizes) == tok.vocab_size
    char = CharTokenizer("aé☕")
    assert int(char.token_bytes()[char.encode("a☕é")].sum()) == len("a☕é".encode())


def test_char_tokenizer_handles_astral_characters():
    tok = CharTokenizer("ab😀")
    assert tok.decode(tok.encode("a😀b𝄞")) == "a😀b\ufffd"


def test_other_tiktoken_encodings_fail_cleanly_offline(monkeypatch):
    import requests

    def offline(*args, **kwargs):
        raise requests.ConnectionError("no network")

    monkeypatch.setattr(requests, "get", offline)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "/nonexistent-cache")
    with pytest.raises(PipelineError, match="tokenizer.name=cl100k_base"):
        tiktoken_spec("cl100k_base")


def bpe_vocab(tmp_path, texts: list[str], vocab_size: int = 300):
    """A trained-BPE vocab folder from a single scan sample of `texts`."""
    scan = tmp_path / "scan" / "s"
    scan.mkdir(parents=True)
    write_json(scan / "scan.json", {"tokenizer": "bpe"})
    (scan / "sample.jsonl").write_text("".join(json.dumps(t) + "\n" for t in texts))
    build_vocab(TokenizerConfig(name="bpe", vocab_size=vocab_size), [scan], tmp_path / "vocab")
    return tmp_path / "vocab"


CORPUS = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n\nThe value of f{i} grows with x." for i in range(300)]


def test_bpe_is_trained_deterministically_and_encodes_like_the_hf_tokenizer(tmp_path):
    from tokenizers import Tokenizer as HF

    a, b = bpe_vocab(tmp_path / "a", CORPUS), bpe_vocab(tmp_path / "b", CORPUS)
    assert {p.name: p.read_bytes() for p in a.iterdir()} == {p.name: p.read_bytes() for p in b.iterdir()}
    spec = json.loads((a / "spec.json").read_text())
    assert spec["kind"] == "tiktoken" and spec["tiktoken_disagrees_on"] == 0 and spec["vocab_size"] == 300
    tok, hf = load_tokenizer(a), HF.from_file(str(a / "tokenizer.json"))
    assert tok.eos_id == 0 == hf.token_to_id("<|endoftext|>")
    for text in ["def g(y):\n    return y", "The value grows.", "ünïcödé ☕ text"]:
        assert tok.encode(text).tolist() == hf.encode(text).ids
        assert tok.decode(tok.encode(text)) == text
        assert int(tok.token_bytes()[tok.encode(text)].sum()) == len(text.encode())
    assert len(tok.encode(CORPUS[0])) < len(CORPUS[0]) / 2, "merges learned from the corpus"


def test_hf_tokenizer_kind(tmp_path):
    vocab = bpe_vocab(tmp_path, CORPUS)
    spec = json.loads((vocab / "spec.json").read_text())
    (vocab / "spec.json").write_text(json.dumps({**spec, "kind": "hf"}))  # what the vocab stage writes if tiktoken disagrees
    hf, fast = load_tokenizer(vocab), load_tokenizer(bpe_vocab(tmp_path / "again", CORPUS))
    texts = ["def h(z):\n    return z", "", "The value.", "a <|endoftext|> b"]
    tokens, lengths = hf.encode_batch(texts[:3])
    expected = [fast.encode(t).tolist() for t in texts[:3]]
    assert lengths.tolist() == [len(e) for e in expected] and tokens.tolist() == sum(expected, [])
    assert hf.token_bytes().tolist() == fast.token_bytes().tolist()
    assert hf.decode(hf.encode(texts[0])) == texts[0]


def test_vocabularies_at_the_same_path_never_mix(tmp_path, monkeypatch, gpt2_vocab):
    """tiktoken caches files by path: a BPE saved where GPT-2's ranks once were must load as itself."""
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(gpt2_vocab, tmp_path / "data" / "vocab")
    assert load_tokenizer("data/vocab").encode("Hello world").tolist() == [15496, 995]
    bpe = bpe_vocab(tmp_path / "trained", CORPUS)
    shutil.rmtree(tmp_path / "data" / "vocab")
    shutil.copytree(bpe, tmp_path / "data" / "vocab")
    assert load_tokenizer("data/vocab").encode("Hello world").tolist() == load_tokenizer(bpe).encode("Hello world").tolist()
    assert load_tokenizer("data/vocab").vocab_size == 300


@pytest.mark.parametrize("sentencepiece", [True, False], ids=["llama2-style", "byte-level"])
def test_a_models_own_tokenizer_is_copied_and_used(tmp_path, sentencepiece):
    folder = write_hf_model_tokenizer(tmp_path / "models/m", sentencepiece)
    build_vocab(TokenizerConfig(name="hf", path=str(folder)), [], tmp_path / "vocab")
    assert (tmp_path / "vocab/tokenizer.json").read_bytes() == (folder / "tokenizer.json").read_bytes()
    spec = json.loads((tmp_path / "vocab/spec.json").read_text())
    tok = load_tokenizer(tmp_path / "vocab")
    assert spec["name"] == "hf-" + hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()[:16] == tok.name
    text = "the cat sat on the mat, naïvely\n\tdef f(x): €"
    ids = tok.encode(text)
    if sentencepiece:
        assert spec["bos_id"] == 1 == tok.bos_id and ids[0] != 1 and tok.eos_id == 2 and spec["stop_ids"] == [2]
        assert tok.decode(ids) == text
        tokens, lengths = with_bos(tok, *tok.encode_batch([text, "cat"]))  # what the tokenize stage stores
        assert lengths[0] == len(ids) + 1 and tokens[0] == 1 and tokens[lengths[0]] == 1 and np.array_equal(tokens[1 : len(ids) + 1], ids)
    else:
        assert spec["bos_id"] is None and ids[0] != tok.eos_id and spec["stop_ids"] == [0, 1]
        assert tok.decode(ids) == text
    prefix_space = 1 if sentencepiece else 0  # Metaspace's space before the first word
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode()) + prefix_space, "bits per byte count every byte once"
    tokens, lengths = tok.encode_batch([text, "cat"])
    assert lengths[0] == len(ids) and np.array_equal(tokens[: len(ids)], ids)


def test_large_hf_vocabularies_use_uint32(tmp_path):
    from pipeline.store import token_dtype

    folder = write_hf_model_tokenizer(tmp_path / "big", sentencepiece=False, vocab_words=70_000)
    build_vocab(TokenizerConfig(name="hf", path=str(folder)), [], tmp_path / "vocab")
    tok = load_tokenizer(tmp_path / "vocab")
    assert tok.vocab_size > 65_536 and token_dtype(tok.vocab_size) == np.uint32
    assert tok.encode("word69999").tolist() == [tok.vocab_size - 1]


def test_hf_tokenizer_folder_errors_name_the_key(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PipelineError, match="tokenizer.path: .*tokenizer.json not found"):
        build_vocab(TokenizerConfig(name="hf", path=str(tmp_path / "empty")), [], tmp_path / "vocab")
    folder = write_hf_model_tokenizer(tmp_path / "m", sentencepiece=False)
    write_json(folder / "tokenizer_config.json", {})
    (folder / "generation_config.json").unlink()
    with pytest.raises(PipelineError, match="no end-of-text token"):
        build_vocab(TokenizerConfig(name="hf", path=str(folder)), [], tmp_path / "vocab")
    assert not (tmp_path / "vocab").exists()


def test_a_models_chat_template_file_is_copied(tmp_path):
    """transformers 5 writes the chat template to chat_template.jinja, not into tokenizer_config.json."""
    folder = write_hf_model_tokenizer(tmp_path / "m", sentencepiece=False)
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}")
    (folder / "README.md").write_text("a model card")
    build_vocab(TokenizerConfig(name="hf", path=str(folder)), [], tmp_path / "vocab")
    assert (tmp_path / "vocab/chat_template.jinja").read_bytes() == (folder / "chat_template.jinja").read_bytes()
    assert not (tmp_path / "vocab/README.md").exists(), "only the tokenizer's files are copied"
