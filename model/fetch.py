"""Download an open model from the Hugging Face hub into `models/<name>/`, at a pinned revision.

    python -m model.fetch HuggingFaceTB/SmolLM2-135M --revision <commit sha> [--out models/SmolLM2-135M]

Only what tinyGPT reads is fetched: `config.json`, `generation_config.json`, the tokenizer files
(with the chat template, `chat_template.jinja` in transformers 5 folders) and the safetensors
weights (sharded too). Pickled weights (`*.bin`, `*.pt`) are never downloaded, so
nothing executable comes along. A branch or tag name is refused: a moving revision would make the
folder, and every DVC stage after it, unreproducible. A hub that cannot be reached is one line of
error within seconds. The folder is then an ordinary input: `tokenizer.path` and `train.init_from`
point at it, and DVC hashes it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from model.folders import HF_CONFIG_FILE, SAFETENSORS_INDEX_FILE, WEIGHTS_FILE
from pipeline.commands import command_parser
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir
from pipeline.tokenizer import CHAT_TEMPLATE_FILE, GENERATION_CONFIG_FILE, HF_TOKENIZER_FILE, TOKENIZER_CONFIG_FILE

FILES = [HF_CONFIG_FILE, GENERATION_CONFIG_FILE, HF_TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, CHAT_TEMPLATE_FILE,
         "special_tokens_map.json", "model*.safetensors", SAFETENSORS_INDEX_FILE]  # not consolidated.* copies
COMMIT = re.compile(r"[0-9a-f]{40}")
REACH_TIMEOUT_S = 5  # for the first contact with the hub: an offline machine is told so in seconds


def fetch(repo_id: str, revision: str, out_dir: Path) -> Path:
    """Download `repo_id` at the commit `revision` into `out_dir` (replaced whole, atomically)."""
    from huggingface_hub import snapshot_download

    if not COMMIT.fullmatch(revision):
        raise PipelineError(f"--revision: {revision!r} is not a 40-character commit sha (branches and tags move)")
    check_hub_reachable(repo_id)
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory() as cache:
        try:
            snapshot_download(repo_id, revision=revision, allow_patterns=FILES, local_dir=tmp, cache_dir=cache)
        except Exception as exc:  # network, auth, unknown repo or revision: one line, nothing left behind
            raise PipelineError(f"{repo_id}@{revision}: download failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
        weights = (tmp / WEIGHTS_FILE).is_file() or (tmp / SAFETENSORS_INDEX_FILE).is_file()
        if not (tmp / HF_CONFIG_FILE).is_file() or not weights:
            raise PipelineError(f"{repo_id}@{revision}: no config.json and safetensors weights (only safetensors models are fetched)")
    return out_dir


def check_hub_reachable(repo_id: str) -> None:
    """One request to the hub's endpoint (`HF_ENDPOINT`, through huggingface_hub's own session and
    proxies), without retries: huggingface_hub retries a refused or timed-out connection five times,
    up to 8 s apart, before giving up. Any HTTP answer will do; no answer is a one-line error."""
    from huggingface_hub import constants, get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=REACH_TIMEOUT_S)
    except Exception as exc:  # refused, timed out, no DNS, a proxy error, offline mode
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise PipelineError(f"{repo_id}: the hub at {constants.ENDPOINT} could not be reached ({reason})") from None


def build_parser(prog: str = "python -m model.fetch") -> argparse.ArgumentParser:
    parser = command_parser(__doc__, prog)
    parser.add_argument("repo_id", help="e.g. HuggingFaceTB/SmolLM2-135M")
    parser.add_argument("--revision", required=True, help="the commit sha to pin")
    parser.add_argument("--out", type=Path, help="default: models/<name>")
    return parser


@cli
def main(argv: Optional[Sequence[str]] = None, prog: str = "python -m model.fetch") -> None:
    args = build_parser(prog).parse_args(argv)
    out = args.out or Path("models") / args.repo_id.split("/")[-1]
    print(f"fetched {args.repo_id}@{args.revision} into {fetch(args.repo_id, args.revision, out)}")


if __name__ == "__main__":
    main()
