"""Download an open model from the Hugging Face hub into `models/<name>/`, at a pinned revision.

    python -m model.fetch HuggingFaceTB/SmolLM2-135M --revision <commit sha> [--out models/SmolLM2-135M]

Only what tinyGPT reads is fetched: `config.json`, `generation_config.json`, the tokenizer files and
the safetensors weights (sharded too). Pickled weights (`*.bin`, `*.pt`) are never downloaded, so
nothing executable comes along. A branch or tag name is refused: a moving revision would make the
folder, and every DVC stage after it, unreproducible. The folder is then an ordinary input:
`tokenizer.path` and `train.init_from` point at it, and DVC hashes it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir

FILES = ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "model*.safetensors", "model.safetensors.index.json"]  # not consolidated.* copies
COMMIT = re.compile(r"[0-9a-f]{40}")


def fetch(repo_id: str, revision: str, out_dir: Path) -> Path:
    """Download `repo_id` at the commit `revision` into `out_dir` (replaced whole, atomically)."""
    from huggingface_hub import snapshot_download

    if not COMMIT.fullmatch(revision):
        raise PipelineError(f"--revision: {revision!r} is not a 40-character commit sha (branches and tags move)")
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory() as cache:
        try:
            snapshot_download(repo_id, revision=revision, allow_patterns=FILES, local_dir=tmp, cache_dir=cache)
        except Exception as exc:  # network, auth, unknown repo or revision: one line, nothing left behind
            raise PipelineError(f"{repo_id}@{revision}: download failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
        weights = (tmp / "model.safetensors").is_file() or (tmp / "model.safetensors.index.json").is_file()
        if not (tmp / "config.json").is_file() or not weights:
            raise PipelineError(f"{repo_id}@{revision}: no config.json and safetensors weights (only safetensors models are fetched)")
    return out_dir


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Fetch a Hugging Face model (safetensors, configs, tokenizer) at a pinned commit.")
    parser.add_argument("repo_id", help="e.g. HuggingFaceTB/SmolLM2-135M")
    parser.add_argument("--revision", required=True, help="the commit sha to pin")
    parser.add_argument("--out", type=Path, help="default: models/<name>")
    args = parser.parse_args(argv)
    out = args.out or Path("models") / args.repo_id.split("/")[-1]
    print(f"fetched {args.repo_id}@{args.revision} into {fetch(args.repo_id, args.revision, out)}")


if __name__ == "__main__":
    main()
