"""`python -m model.export`: the exported folder works in `transformers` as our checkpoint works here:
same token ids as our tokenizers, same greedy generation, logits within 1e-4."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

from model.export import export, generation_config, main  # noqa: E402
from model.generate import encode_prompt  # noqa: E402
from model.gpt import GPT, GPTConfig  # noqa: E402
from model.llama import Llama, LlamaConfig  # noqa: E402
from pipeline.bpe import train_bpe  # noqa: E402
from pipeline.errors import PipelineError  # noqa: E402
from pipeline.tokenizer import EOS_TEXT, load_tokenizer  # noqa: E402
from tests.helpers import REPO, save_model, write_char_vocab  # noqa: E402

VARIED = [
    "Hello world",
    "def f(x):\n    return {'a': x ** 2}  # square\n\n\n\tif a != b:\n\t\tpass\n",
    "I'm sure they've said we'll go, you're right, he'd know. IT'S DON'T",
    "   leading, trailing and inner   runs   \n  \n\n \t\r\n",
    "Ünïcödé 日本語のテキスト 😀👍🏽 مرحبا Привет, мир  \u00a0nbsp\u2003em\u200bzw",
    "1234567 3.14159 1e-10 0x1F ١٢٣ ½",
    "a \n\nb\n",
    "ends with spaces  ",
]
PROMPT = "def hello(name):\n    print(f'Hi {name}')\n"


def randomise(model: torch.nn.Module) -> torch.nn.Module:
    """Weights large enough that greedy choices are clear-cut, norms around 1."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(1.0 if "norm" in name or "ln_" in name else 0.0, 0.2)
    return model.eval()


def hf_generate(folder, prompt: str, n: int) -> tuple[list[int], str]:
    """Greedy continuation through `transformers.pipeline`: all token ids, and the full text."""
    pipe = transformers.pipeline("text-generation", model=str(folder))
    ids = pipe(prompt, max_new_tokens=n, do_sample=False, return_tensors=True)[0]["generated_token_ids"]
    text = pipe(prompt, max_new_tokens=n, do_sample=False)[0]["generated_text"]
    return [int(i) for i in ids], text


def our_generate(model, tokenizer, prompt: str, n: int) -> list[int]:
    idx = torch.tensor([encode_prompt(tokenizer, prompt, model.config.block_size)])
    return model.generate(idx, n, temperature=0, eos_id=tokenizer.eos_id)[0].tolist()


def assert_logits_match(model, folder) -> None:
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    idx = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def gpt2_export(gpt2_vocab, tmp_path_factory):
    """A tiny GPT-2 over GPT-2's vocabulary, saved with it and exported."""
    tmp = tmp_path_factory.mktemp("gpt2")
    model = randomise(GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=16)))
    save_model(model, tmp / "ckpt", gpt2_vocab)
    export(tmp / "ckpt", tmp / "hf")
    return model, tmp / "hf"


def test_gpt2_folder_contents(gpt2_export):
    _, folder = gpt2_export
    names = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert sorted(p.name for p in folder.iterdir()) == names
    assert sorted(p.name for p in folder.parent.iterdir()) == ["ckpt", "hf"]  # no temporary folder left
    assert len({(folder / name).stat().st_mode for name in names}) == 1  # the weights are not left private
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": 50256}


def test_gpt2_tokenizer_encodes_as_tiktoken(gpt2_export, gpt2_vocab):
    ours = load_tokenizer(gpt2_vocab)
    theirs = transformers.AutoTokenizer.from_pretrained(gpt2_export[1])
    texts = [*VARIED, (REPO / "model" / "gpt.py").read_text(), "".join(VARIED)]
    for text in texts:
        ids = [int(i) for i in ours.encode(text)]
        assert theirs.encode(text, add_special_tokens=False) == ids, text[:40]
        assert theirs.decode(ids) == text
    assert theirs.encode("Hello world") == [15496, 995]
    assert theirs.eos_token_id == theirs.pad_token_id == 50256


def test_gpt2_generates_and_scores_like_ours(gpt2_export, gpt2_vocab):
    model, folder = gpt2_export
    tokenizer = load_tokenizer(gpt2_vocab)
    ids, text = hf_generate(folder, PROMPT, 12)
    expected = our_generate(model, tokenizer, PROMPT, 12)
    assert ids == expected and len(ids) > len(tokenizer.encode(PROMPT))
    assert text == tokenizer.decode(expected)
    assert_logits_match(model, folder)


def bpe_vocab(folder, vocab_size: int):
    """A trained byte-level BPE that only `tokenizers` encodes (`kind: hf`), as the vocab stage writes it."""
    trained = train_bpe([(REPO / "model" / name).read_text() for name in ("gpt.py", "llama.py")], vocab_size)
    folder.mkdir()
    trained.save(str(folder / "tokenizer.json"))
    spec = {"kind": "hf", "name": "bpe", "eos_text": EOS_TEXT, "vocab_size": trained.get_vocab_size(), "eos_id": 0, "pad_id": 0}
    (folder / "spec.json").write_text(json.dumps(spec))
    return folder


@pytest.mark.parametrize("tie", [True, False])
def test_llama_with_a_trained_bpe(tmp_path, tie):
    vocab = bpe_vocab(tmp_path / "vocab", 400)
    tokenizer = load_tokenizer(vocab)
    model = randomise(Llama(LlamaConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=4, n_kv_head=2,
                                        n_embd=32, intermediate_size=48, tie_weights=tie)))
    save_model(model, tmp_path / "ckpt", vocab)
    export(tmp_path / "ckpt", tmp_path / "hf")
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (vocab / "tokenizer.json").read_bytes()
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in VARIED:
        assert theirs.encode(text, add_special_tokens=False) == [int(i) for i in tokenizer.encode(text)]
    ids, text = hf_generate(tmp_path / "hf", PROMPT, 12)
    expected = our_generate(model, tokenizer, PROMPT, 12)
    assert ids == expected and text == tokenizer.decode(expected)
    assert_logits_match(model, tmp_path / "hf")
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "hf").eos_token_id == 0


def test_char_vocabulary_exports_too(tmp_path):
    vocab = write_char_vocab(tmp_path / "vocab", "abcdef \n\t'é😀")
    tokenizer = load_tokenizer(vocab)
    model = randomise(GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)))
    save_model(model, tmp_path / "ckpt", vocab)
    export(tmp_path / "ckpt", tmp_path / "hf")
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in ("abc def\n\tcafé 😀", "a\r\nZ?b", "  "):
        ids = [int(i) for i in tokenizer.encode(text)]
        assert theirs.encode(text, add_special_tokens=False) == ids
        assert theirs.decode(ids) == tokenizer.decode(ids)
    ids, _ = hf_generate(tmp_path / "hf", "a bad cafe", 8)
    assert ids == our_generate(model, tokenizer, "a bad cafe", 8)


def test_missing_tokenizer_is_a_one_line_error(tmp_path, capsys):
    save_model(GPT(GPTConfig(vocab_size=16, block_size=8, n_layer=1, n_head=1, n_embd=8)), tmp_path / "ckpt")
    with pytest.raises(PipelineError, match="spec.json: not found") as err:
        export(tmp_path / "ckpt", tmp_path / "hf")
    assert "\n" not in str(err.value)
    with pytest.raises(SystemExit) as code:
        main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")])
    assert code.value.code == 1 and capsys.readouterr().err.startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_tokenizer_larger_than_the_model_is_refused(tmp_path):
    vocab = write_char_vocab(tmp_path / "vocab", "abcdef")
    save_model(GPT(GPTConfig(vocab_size=4, block_size=8, n_layer=1, n_head=1, n_embd=8)), tmp_path / "ckpt", vocab)
    with pytest.raises(PipelineError, match="vocab_size 8 exceeds the model's 4"):
        export(tmp_path / "ckpt", tmp_path / "hf")


@pytest.mark.parametrize("own_settings", [True, False])
def test_a_models_own_tokenizer_keeps_its_bos_and_settings(tmp_path, own_settings):
    from tokenizers import processors

    trained = train_bpe([(REPO / "model" / "gpt.py").read_text()], 300)
    trained.add_special_tokens(["<s>"])
    bos = trained.token_to_id("<s>")
    trained.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    vocab = tmp_path / "vocab"
    vocab.mkdir()
    trained.save(str(vocab / "tokenizer.json"))
    settings = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": EOS_TEXT, "model_max_length": 77}
    if own_settings:
        (vocab / "tokenizer_config.json").write_text(json.dumps(settings))
    spec = {"kind": "hf", "name": "own", "vocab_size": bos + 1, "eos_text": EOS_TEXT, "eos_id": 0, "pad_id": 0,
            "bos_text": "<s>", "bos_id": bos, "stop_ids": [0]}
    (vocab / "spec.json").write_text(json.dumps(spec))
    tokenizer = load_tokenizer(vocab)
    model = randomise(Llama(LlamaConfig(vocab_size=bos + 1, block_size=64, n_layer=1, n_head=2, n_kv_head=1, n_embd=16,
                                        intermediate_size=32)))
    save_model(model, tmp_path / "ckpt", vocab)
    export(tmp_path / "ckpt", tmp_path / "hf")
    written = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert (written == settings) == own_settings and written["bos_token"] == "<s>"
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert theirs.encode(PROMPT) == encode_prompt(tokenizer, PROMPT, 64) and theirs.encode(PROMPT)[0] == bos
    ids, _ = hf_generate(tmp_path / "hf", PROMPT, 8)
    assert ids == our_generate(model, tokenizer, PROMPT, 8)
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation == {"bos_token_id": bos, "eos_token_id": 0, "pad_token_id": 0}
    several = generation_config({**spec, "stop_ids": [0, 7]})
    assert several == {"bos_token_id": bos, "eos_token_id": [0, 7], "pad_token_id": 0}


@pytest.mark.parametrize("switch, shown", [
    (dict(positions="rope"), "model.positions: rope"), (dict(norm="rmsnorm"), "model.norm: rmsnorm"),
    (dict(mlp="relu2"), "model.mlp: relu2"), (dict(qk_norm=True), "model.qk_norm: true"),
    (dict(logit_softcap=15.0), "model.logit_softcap: 15.0"), (dict(unet=True), "model.unet: true"),
])
def test_a_switch_transformers_cannot_represent_refuses_export_naming_it(tmp_path, capsys, switch, shown):
    vocab = write_char_vocab(tmp_path / "vocab", "abcdef")
    save_model(GPT(GPTConfig(vocab_size=8, block_size=8, n_layer=2, n_head=2, n_embd=8, **switch)), tmp_path / "ckpt", vocab)
    with pytest.raises(SystemExit) as code:
        main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert code.value.code == 1 and shown in err and err.count("\n") == 1
    assert not (tmp_path / "hf").exists()


def test_zero_initialised_projections_still_export_with_parity(tmp_path):
    """zero_init is only where training starts: the model is plain GPT-2."""
    vocab = write_char_vocab(tmp_path / "vocab", "abcdef \n")
    model = randomise(GPT(GPTConfig(vocab_size=10, block_size=32, n_layer=2, n_head=2, n_embd=16, zero_init=True)))
    save_model(model, tmp_path / "ckpt", vocab)
    export(tmp_path / "ckpt", tmp_path / "hf")
    assert_logits_match(model, tmp_path / "hf")


def test_export_refuses_a_folder_of_other_files_unless_forced(tmp_path, capsys):
    vocab = write_char_vocab(tmp_path / "vocab", "abc")
    save_model(GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8)), tmp_path / "ckpt", vocab)
    out = tmp_path / "out"
    export(tmp_path / "ckpt", out)
    export(tmp_path / "ckpt", out)  # a previous export is replaced without asking
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(out)])
    err = capsys.readouterr().err
    assert err == f"error: --out {out}: holds notes.txt, which an export does not write; pass --force to replace the whole folder\n"
    assert (out / "notes.txt").read_text() == "mine"
    main(["--checkpoint", str(tmp_path / "ckpt"), "--out", str(out), "--force"])
    assert not (out / "notes.txt").exists() and (out / "config.json").is_file()


def test_the_chat_template_travels_with_the_export(tmp_path):
    """A model's own chat template (chat_template.jinja in its tokenizer folder, as the vocab stage
    copies it) is exported as chat_template.jinja; the one a checkpoint was fine-tuned with wins."""
    vocab = write_char_vocab(tmp_path / "vocab", "abc")
    (vocab / "chat_template.jinja").write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    save_model(GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8)), tmp_path / "ckpt", vocab)
    export(tmp_path / "ckpt", tmp_path / "out")
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == "{% for m in messages %}{{ m.content }}{% endfor %}"
    (tmp_path / "ckpt" / "template.json").write_text(json.dumps({"name": "model", "chat_template": "{{ messages[0].content }}"}))
    export(tmp_path / "ckpt", tmp_path / "out")
    assert (tmp_path / "out" / "chat_template.jinja").read_text() == "{{ messages[0].content }}"
    (tmp_path / "ckpt" / "template.json").unlink()
    (vocab / "chat_template.jinja").unlink()
    save_model(GPT(GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8)), tmp_path / "plain", vocab)
    export(tmp_path / "plain", tmp_path / "out")
    assert not (tmp_path / "out" / "chat_template.jinja").exists()
