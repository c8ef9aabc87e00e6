"""The `mix` stage: a deterministic train mixture from per-source weights and a token budget.

Weights are shares of train *tokens* (each document costs its tokens plus one EOS). A source
whose share exceeds its size is repeated in whole epochs, then topped up with a seeded sample of
its documents; a smaller share is a seeded sample alone. The last sampled document is cut so
the source gets exactly its share. With `data_fraction` below 1, each source first keeps a seeded
subset of its documents holding that share of its tokens, and epochs count over the subset: a
mixture-search proxy with a quarter of the budget and a quarter of the data repeats every source
as often as the full run does (repetition is what a mixture changes most on small sources). Each source samples with its own seed (from `seed` and its
name), so adding a source never changes what another contributes. Val sets are never mixed.

Writes `data/mix/`, an index over the token stores in the mixture's (seeded) order: `source.npy`
(uint16, index into the manifest's `sources`), `doc.npy` (int64, the document in that source's
store) and `keep.npy` (int64, how many of its tokens to keep, its EOS not counted), with a
manifest; and the report `metrics/mix.json`. Its size follows the number of documents, not tokens.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from pipeline.commands import stage_arguments
from pipeline.config import MixConfig, load_params
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir, remove_dropped_sources, sha256_file, write_json
from pipeline.paths import MANIFEST_FILE, METRICS_DIR, MIX_DIR, SPLIT_DIR, TOKENS_DIR
from pipeline.store import TokenStore

REPORT_FILE = METRICS_DIR / "mix.json"
MIX_COLUMNS = ("source", "doc", "keep")


@dataclass
class Selection:
    """Rows of one source's train table, and how many tokens of each to keep (a prefix)."""

    rows: np.ndarray
    keep: np.ndarray


def source_rng(seed: int, name: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def select_tokens(lengths: np.ndarray, target: int, rng: np.random.Generator) -> Selection:
    """Whole epochs of all documents, then a seeded sample for the remainder, cut to hit `target`.

    The cut document may keep 0 tokens: then it contributes its EOS alone.
    """
    costs = lengths + 1
    total = int(costs.sum())
    epochs, remainder = divmod(target, total)
    rows = [np.tile(np.arange(len(lengths)), epochs)]
    keep = [np.tile(lengths, epochs)]
    order = rng.permutation(len(lengths))
    filled = np.cumsum(costs[order])
    whole = int(np.searchsorted(filled, remainder, side="right"))
    rows.append(order[:whole])
    keep.append(lengths[order[:whole]])
    left = remainder - (int(filled[whole - 1]) if whole else 0)
    if left > 0:
        rows.append(order[whole : whole + 1])
        keep.append(np.array([left - 1]))
    return Selection(rows=np.concatenate(rows).astype(np.int64), keep=np.concatenate(keep).astype(np.int64))


def draw_pool(lengths: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """The documents (sorted indices) the mixture may use: all of them, or a seeded subset holding
    `fraction` of the tokens (the document that crosses the mark is in; at least one document)."""
    if fraction >= 1:
        return np.arange(len(lengths))
    order = rng.permutation(len(lengths))
    filled = np.cumsum(lengths[order] + 1)
    count = int(np.searchsorted(filled, fraction * filled[-1], side="left")) + 1
    return np.sort(order[: min(count, len(order))])


def split_budget(budget: int, shares: dict[str, float]) -> dict[str, int]:
    """Whole-token targets that add up to `budget` exactly (largest remainder, ties by name)."""
    quotas = {name: budget * share for name, share in sorted(shares.items())}
    targets = {name: int(q) for name, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda name: (-(quotas[name] - targets[name]), name))
    for name in by_remainder[: budget - sum(targets.values())]:
        targets[name] += 1
    return targets


def plan_mixture(lengths: dict[str, np.ndarray], cfg: MixConfig, seed: int) -> tuple[dict[str, Selection], dict]:
    """Select documents per source for `cfg`; return the selections and the mixture report."""
    total_weight = sum(cfg.weights.values())
    targets = split_budget(cfg.train_tokens, {n: w / total_weight for n, w in cfg.weights.items() if w > 0})
    selections, report = {}, {}
    for name, target in targets.items():
        weight = cfg.weights[name]
        rng = source_rng(seed, name)
        pool = draw_pool(lengths[name], cfg.data_fraction, rng)
        available = int((lengths[name][pool] + 1).sum())
        chosen = select_tokens(lengths[name][pool], target, rng)
        selections[name] = Selection(rows=pool[chosen.rows], keep=chosen.keep)
        report[name] = {
            "weight": weight,
            "requested_share": weight / total_weight,
            "epochs": target / available,
            "available_tokens": available,
            "source_tokens": int((lengths[name] + 1).sum()),
        }
    achieved = {name: int((s.keep + 1).sum()) for name, s in selections.items()}
    total = sum(achieved.values())
    for name, tokens in achieved.items():
        report[name].update(tokens=tokens, docs=len(selections[name].rows), achieved_share=tokens / total)
    return selections, {"sources": report, "train_tokens": total}


def interleave(selections: dict[str, Selection], docs: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The selected documents of all sources in one seeded order: `source` (index into sorted names),
    `doc` (document index in its store) and `keep` columns."""
    names = sorted(selections)
    which = np.concatenate([np.full(len(selections[n].rows), i, dtype=np.uint16) for i, n in enumerate(names)])
    doc = np.concatenate([docs[n][selections[n].rows] for n in names])
    keep = np.concatenate([selections[n].keep for n in names])
    order = np.random.default_rng(seed).permutation(len(which))
    return {"source": which[order], "doc": doc[order], "keep": keep[order]}


def write_mixture(columns: dict[str, np.ndarray], names: list[str], seed: int, inputs: dict, out_dir: Path) -> None:
    """Write the mixture index and its manifest into `out_dir` (replaced whole)."""
    with atomic_dir(out_dir) as tmp:
        for name in MIX_COLUMNS:
            np.save(tmp / f"{name}.npy", columns[name])
        manifest = {"seed": seed, "sources": names, "docs": len(columns["doc"]),
                    "tokens": int((columns["keep"] + 1).sum()), "inputs": inputs}
        write_json(tmp / MANIFEST_FILE, manifest)


def train_documents(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A source's train documents (indices into its store) and their lengths in tokens."""
    split = np.load(SPLIT_DIR / name / "train.npy")
    offsets = TokenStore(TOKENS_DIR / name).offsets
    return split, offsets[split + 1] - offsets[split]


@cli
def main(argv: Optional[Sequence[str]] = None) -> None:
    stage_arguments(__doc__, "pipeline.mix", argv)
    params = load_params()
    remove_dropped_sources(SPLIT_DIR, params.sources, "mix")
    cfg = params.mix
    names = sorted(name for name, w in cfg.weights.items() if w > 0)
    docs, lengths = {}, {}
    for name in names:
        docs[name], lengths[name] = train_documents(name)
        if len(docs[name]) == 0:
            raise PipelineError(f"mix.weights.{name}: source '{name}' has no train documents")
    selections, report = plan_mixture(lengths, cfg, params.seed)
    inputs = {name: sha256_file(SPLIT_DIR / name / MANIFEST_FILE) for name in names}
    write_mixture(interleave(selections, docs, params.seed), names, params.seed, inputs, MIX_DIR)
    write_json(REPORT_FILE, report)
    for name, row in report["sources"].items():
        print(f"mix {name}: requested {row['requested_share']:.3f}, achieved {row['achieved_share']:.3f}, epochs {row['epochs']:.2f}")


if __name__ == "__main__":
    main()
