"""The `mix` stage: a deterministic train mixture from per-source weights and a token budget.

Weights are shares of train *tokens* (each document costs its tokens plus one EOS). A source
whose share exceeds its size is repeated in whole epochs, then topped up with a seeded sample of
its documents; a smaller share is a seeded sample alone. The last sampled document is cut so
the source gets exactly its share. Each source samples with its own seed (from `seed` and its
name), so adding a source never changes what another contributes. Val sets are never mixed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import MixConfig, load_params
from pipeline.docs import DocTable, DocWriter
from pipeline.errors import PipelineError, cli
from pipeline.io import atomic_dir, sha256_file, write_json
from pipeline.split import SPLIT_DIR

MIX_DIR = Path("data/mix")
REPORT_FILE = Path("metrics/mix.json")


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
        available = int((lengths[name] + 1).sum())
        selections[name] = select_tokens(lengths[name], target, source_rng(seed, name))
        report[name] = {
            "weight": weight,
            "requested_share": weight / total_weight,
            "epochs": target / available,
            "available_tokens": available,
        }
    achieved = {name: int((s.keep + 1).sum()) for name, s in selections.items()}
    total = sum(achieved.values())
    for name, tokens in achieved.items():
        report[name].update(tokens=tokens, docs=len(selections[name].rows), achieved_share=tokens / total)
    return selections, {"sources": report, "train_tokens": total}


def write_mixture(tables: dict[str, DocTable], selections: dict[str, Selection], seed: int, out_dir: Path) -> None:
    """Write the selected documents, interleaved in a seeded order, to `out_dir/train.arrow`."""
    names = sorted(selections)
    which = np.concatenate([np.full(len(selections[n].rows), i) for i, n in enumerate(names)])
    index = np.concatenate([np.arange(len(selections[n].rows)) for n in names])
    order = np.random.default_rng(seed).permutation(len(which))
    dtype = next(iter(tables.values())).dtype
    with atomic_dir(out_dir) as tmp:
        with DocWriter(tmp / "train.arrow", dtype) as writer:
            ids = {n: tables[n].doc_ids for n in names}
            for k in order:
                name = names[which[k]]
                row, keep = selections[name].rows[index[k]], selections[name].keep[index[k]]
                writer.write(ids[name][row], name, tables[name].tokens(row)[:keep])
        inputs = {n: sha256_file(tables[n].path) for n in names}
        write_json(tmp / "manifest.json", {"seed": seed, "docs": writer.docs, "tokens": writer.tokens, "inputs": inputs})


@cli
def main() -> None:
    params = load_params()
    cfg = params.mix
    tables = {name: DocTable(SPLIT_DIR / name / "train.arrow") for name, w in cfg.weights.items() if w > 0}
    for name, table in tables.items():
        if len(table) == 0:
            raise PipelineError(f"mix.weights.{name}: source '{name}' has no train documents")
    selections, report = plan_mixture({n: t.lengths for n, t in tables.items()}, cfg, params.seed)
    write_mixture(tables, selections, params.seed, MIX_DIR)
    write_json(REPORT_FILE, report)
    for name, row in report["sources"].items():
        print(f"mix {name}: requested {row['requested_share']:.3f}, achieved {row['achieved_share']:.3f}, epochs {row['epochs']:.2f}")


if __name__ == "__main__":
    main()
