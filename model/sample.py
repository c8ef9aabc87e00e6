"""The `sample` stage: text from the trained model, written to `data/samples.md`.

`python -m model.sample` loads `data/model/` and its `tokenizer/`, generates `sample.num_samples`
continuations of each of `sample.prompts` with the `sample` settings and the global `seed`, and
writes them (prompt and settings first) atomically.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Sequence

from model.config import SampleConfig
from model.runtime import resolve_device
from pipeline.commands import stage_arguments
from pipeline.config import load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_file
from pipeline.paths import MODEL_DIR, SAMPLES_FILE


def generate_samples(model_dir: str | Path, cfg: SampleConfig, seed: int) -> list[tuple[str, list[str]]]:
    """For each prompt, `cfg.num_samples` generated texts."""
    from model.folders import CONFIG_FILE, TOKENIZER_DIR, load_any
    from model.generate import sample_texts
    from pipeline.tokenizer import load_tokenizer

    model_dir = Path(model_dir)
    if not (model_dir / CONFIG_FILE).is_file():
        raise PipelineError(f"{model_dir}: no trained model (run `dvc repro train` first?)")
    if cfg.num_samples < 1 or cfg.max_new_tokens < 0 or not cfg.prompts:
        raise PipelineError("sample: need at least one prompt, num_samples >= 1 and max_new_tokens >= 0")
    device = resolve_device(cfg.device)
    model = load_any(model_dir, map_location=device).to(device)
    tokenizer = load_tokenizer(model_dir / TOKENIZER_DIR)
    texts = sample_texts(
        model, tokenizer, cfg.prompts, cfg.num_samples, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.top_p, seed
    )
    n = cfg.num_samples
    if len(texts) != len(cfg.prompts) * n:
        raise PipelineError(f"sample: expected {len(cfg.prompts) * n} samples, the generator returned {len(texts)}")
    return [(prompt, texts[i * n : (i + 1) * n]) for i, prompt in enumerate(cfg.prompts)]


def render_markdown(samples: list[tuple[str, list[str]]], cfg: SampleConfig, seed: int, model_dir: str | Path) -> str:
    """Markdown: the settings, then one section per prompt with its samples in fenced blocks."""
    lines = [
        "# Samples",
        "",
        f"Model `{model_dir}`, seed {seed}, temperature {cfg.temperature}, top_k {cfg.top_k}, "
        f"top_p {cfg.top_p}, up to {cfg.max_new_tokens} new tokens.",
        "",
    ]
    for i, (prompt, texts) in enumerate(samples, 1):
        lines += [f"## Prompt {i}", "", _fenced(prompt), ""]
        for j, text in enumerate(texts, 1):
            lines += [f"### Sample {i}.{j}", "", _fenced(text), ""]
    return "\n".join(lines)


def _fenced(text: str) -> str:
    """A fenced block longer than any backtick run inside `text`."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def sample(model_dir: str | Path, out_path: str | Path, cfg: SampleConfig, seed: int) -> list[tuple[str, list[str]]]:
    """Generate and write `out_path` atomically; return the samples."""
    samples = generate_samples(model_dir, cfg, seed)
    with atomic_file(out_path) as f:
        f.write(render_markdown(samples, cfg, seed, model_dir))
    return samples


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    stage_arguments(__doc__, "model.sample", argv)
    params = load_params()
    samples = sample(MODEL_DIR, SAMPLES_FILE, params.sample, params.seed)
    print(f"sample: {sum(len(t) for _, t in samples)} samples -> {SAMPLES_FILE}")


if __name__ == "__main__":
    main()
