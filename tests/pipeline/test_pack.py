"""pack: plans (concat / pad / bestfit), the written blocks, masks and the manifest."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.blocks import load_blocks
from pipeline.config import PackConfig
from pipeline.errors import PipelineError
from pipeline.pack import Documents, Plan, pack_documents, plan_blocks
from tests.helpers import materialise, write_store

EOS, PAD = 999, 998  # distinct from every document token (< 900), so padding is visible in the tokens
TOKENIZER = {"tokenizer": "test", "vocab_size": 1000, "eos_id": EOS, "pad_id": PAD}
MODES = ("concat", "pad", "bestfit")


def random_lengths(n: int, high: int, seed: int) -> np.ndarray:
    lengths = np.random.default_rng(seed).integers(0, high, size=n)
    lengths[::7] = 0  # documents with no tokens still carry their EOS
    return lengths


def as_lists(plan: Plan) -> list[list[tuple[int, int, int]]]:
    """The plan as a list of blocks, each a list of (document, start, length) pieces."""
    pieces = list(zip(plan.doc.tolist(), plan.start.tolist(), plan.length.tolist()))
    return [pieces[a:b] for a, b in zip(plan.block_offsets[:-1].tolist(), plan.block_offsets[1:].tolist())]


def pack(tmp_path, lengths, context_length: int, mode: str, seed: int = 0, sources: int = 2):
    """Random documents of the given lengths in `sources` stores (document k in store k % sources),
    packed; returns the blocks, the documents and the manifest."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, 900, size=int(n)) for n in lengths]
    stores = {f"s{i}": tmp_path / f"store-{mode}-{i}" for i in range(sources)}
    for i, folder in enumerate(stores.values()):
        write_store(folder, docs[i::sources])
    k = np.arange(len(docs))
    packed = Documents(store=(k % sources).astype(np.uint16), doc=k // sources, length=np.asarray(lengths, dtype=np.int64))
    cfg = PackConfig(context_length=context_length, mode=mode)
    manifest = pack_documents(packed, stores, cfg, TOKENIZER, tmp_path / mode, tmp_path / mode, {"x": "y"})
    return load_blocks(tmp_path / mode), docs, manifest


def read_all(blocks):
    return blocks.read(np.arange(len(blocks)))


def check_plan(plan, lengths, width: int, mode: str) -> None:
    plan = as_lists(plan)
    sizes = [int(n) + 1 for n in lengths]
    covered = {doc: [] for doc in range(len(sizes))}
    for block in plan:
        assert block, "empty block"
        assert sum(length for _, _, length in block) <= width  # never overflows
        for doc, start, length in block:
            assert length > 0 and 0 <= start and start + length <= sizes[doc]
            covered[doc].append((start, length))
    for doc, pieces in covered.items():  # every token+EOS of every document exactly once
        pieces.sort()
        assert pieces[0][0] == 0
        assert all(a[0] + a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
        assert pieces[-1][0] + pieces[-1][1] == sizes[doc]
    if mode == "concat":
        assert all(sum(p[2] for p in block) == width for block in plan[:-1])
        flat = [piece for block in plan for piece in block]
        assert [(d, s) for d, s, _ in flat] == sorted((d, s) for d, s, _ in flat)  # the stream, in order
    if mode == "pad":
        assert all(len(block) == 1 for block in plan)
        assert [block[0][:2] for block in plan] == sorted(block[0][:2] for block in plan)  # document order
    if mode == "bestfit":
        for doc, pieces in covered.items():
            if sizes[doc] <= width:
                assert len(pieces) == 1  # a document that fits is never cut
            else:
                assert all(length == width for _, length in pieces[:-1])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("width", [2, 3, 16, 33])
def test_plan_capacity_and_coverage(mode, width):
    for seed in range(5):
        lengths = random_lengths(40, 3 * width, seed)
        check_plan(plan_blocks(lengths, width, mode), lengths, width, mode)


def test_plan_unknown_mode():
    with pytest.raises(PipelineError, match="pack.mode"):
        plan_blocks([1, 2], 8, "shuffle")


def test_concat_reconstructs_the_stream(tmp_path):
    lengths = random_lengths(60, 50, seed=1)
    blocks, docs, _ = pack(tmp_path, lengths, context_length=15, mode="concat")
    tokens, segments = read_all(blocks)
    assert tokens.shape[1] == 16 and blocks.context_length == 15
    stream = np.concatenate([np.append(d, EOS) for d in docs])
    assert np.array_equal(tokens[segments > 0], stream)  # every token once, EOS after each document
    assert np.array_equal(tokens.reshape(-1)[: len(stream)], stream)
    padded_rows = np.flatnonzero((segments == 0).any(axis=1))
    assert set(padded_rows) <= {len(blocks) - 1}  # only the last block has padding
    assert len(blocks) == -(-len(stream) // 16)
    assert np.all(tokens[segments == 0] == PAD)


def test_documents_cut_by_the_mixture_end_with_eos(tmp_path):
    write_store(tmp_path / "s", [np.arange(10, 30), np.arange(40, 45)])
    cut = Documents(store=np.zeros(3, np.uint16), doc=np.array([0, 1, 0]), length=np.array([7, 5, 0]))  # keep 7, all, 0
    cfg = PackConfig(context_length=7, mode="concat")
    pack_documents(cut, {"s": tmp_path / "s"}, cfg, TOKENIZER, tmp_path / "b", tmp_path / "b", {})
    tokens, segments = read_all(load_blocks(tmp_path / "b"))
    assert tokens[segments > 0].tolist() == [*range(10, 17), EOS, *range(40, 45), EOS, EOS]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sources", [1, 3])
def test_blocks_equal_the_materialised_format(tmp_path, mode, sources):
    """Gathering blocks through the index gives, token for token, what writing them out gave."""
    lengths = random_lengths(70, 45, seed=5)
    blocks, docs, _ = pack(tmp_path, lengths, context_length=19, mode=mode, seed=5, sources=sources)
    expected = materialise(docs, as_lists(plan_blocks(lengths, 20, mode)), 20, EOS, PAD)
    tokens, segments = read_all(blocks)
    assert np.array_equal(tokens, expected[0]) and np.array_equal(segments, expected[1])
    rows = np.random.default_rng(0).integers(0, len(blocks), size=25)  # any rows, any order, repeats
    tokens, segments = blocks.read(rows)
    assert np.array_equal(tokens, expected[0][rows]) and np.array_equal(segments, expected[1][rows])


@pytest.mark.parametrize("mode", MODES)
def test_blocks_masks_and_segments(tmp_path, mode):
    lengths = random_lengths(50, 40, seed=2)
    blocks, docs, _ = pack(tmp_path, lengths, context_length=19, mode=mode, seed=2)
    tokens, segments = read_all(blocks)
    assert np.array_equal(segments == 0, tokens == PAD)  # the mask covers exactly the padding
    for seg in segments:  # documents numbered 1, 2, ... in order, contiguous, padding only at the end
        nonzero = seg[seg > 0]
        assert np.all(seg[len(nonzero) :] == 0)
        assert nonzero[0] == 1 and np.all(np.diff(nonzero) >= 0) and np.all(np.diff(nonzero) <= 1)
    batch = blocks.batch(np.arange(len(blocks)))
    assert np.array_equal(batch["inputs"], tokens[:, :-1]) and np.array_equal(batch["targets"], tokens[:, 1:])
    assert batch["loss_mask"].dtype == bool
    assert np.array_equal(batch["loss_mask"], tokens[:, 1:] != PAD)
    assert np.array_equal(batch["segment_ids"], segments[:, :-1])
    total = int((lengths + 1).sum())
    assert int((segments > 0).sum()) == total
    # every EOS marks the end of a document (or of a piece ending with it)
    assert int((tokens == EOS).sum()) == len(lengths)


def test_pad_mode_one_document_or_chunk_per_block(tmp_path):
    lengths = np.array([3, 0, 25, 10, 9, 41])
    blocks, docs, _ = pack(tmp_path, lengths, context_length=9, mode="pad")
    tokens, segments = read_all(blocks)
    assert np.all(segments.max(axis=1) == 1)  # a single segment per block
    # documents back in order: 3+1 -> 1 block, 0+1 -> 1, 25+1 -> 3, 10+1 -> 2, 9+1 -> 1, 41+1 -> 5
    assert len(blocks) == 13
    stream = np.concatenate([np.append(d, EOS) for d in docs])
    assert np.array_equal(tokens[segments > 0], stream)


def test_bestfit_pads_less_than_pad_mode(tmp_path):
    rng = np.random.default_rng(0)
    lengths = np.minimum(rng.lognormal(mean=4.2, sigma=0.9, size=600).astype(int), 1200)
    width = 257
    assert np.any(lengths + 1 > width)
    bestfit, pad = as_lists(plan_blocks(lengths, width, "bestfit")), as_lists(plan_blocks(lengths, width, "pad"))
    check_plan(plan_blocks(lengths, width, "bestfit"), lengths, width, "bestfit")
    padding = {name: len(plan) * width - int((lengths + 1).sum()) for name, plan in (("bestfit", bestfit), ("pad", pad))}
    assert padding["bestfit"] < padding["pad"]
    assert padding["bestfit"] / (len(bestfit) * width) < 0.05  # close to concat's efficiency
    assert len(bestfit) <= 1.06 * len(plan_blocks(lengths, width, "concat"))
    leftovers = [(int(n) + 1) % width for n in lengths if (int(n) + 1) % width]
    partial = [b for b in bestfit if not (len(b) == 1 and b[0][2] == width)]
    assert sorted(sum(p[2] for p in b) for b in partial) == brute_force_bfd_loads(leftovers, width)


def brute_force_bfd_loads(chunks: list[int], width: int) -> list[int]:
    loads: list[int] = []
    for size in sorted(chunks, reverse=True):
        fits = [b for b, load in enumerate(loads) if width - load >= size]
        if fits:
            loads[min(fits, key=lambda b: width - loads[b])] += size
        else:
            loads.append(size)
    return sorted(loads)


@pytest.mark.parametrize("seed", range(30))
def test_bestfit_places_each_chunk_in_the_tightest_block(seed):
    rng = np.random.default_rng(seed)
    width = int(rng.integers(4, 24))
    lengths = rng.integers(0, 3 * width, size=int(rng.integers(1, 40)))
    check_plan(plan_blocks(lengths, width, "bestfit"), lengths, width, "bestfit")
    plan = as_lists(plan_blocks(lengths, width, "bestfit"))
    full = [b for b in plan if len(b) == 1 and b[0][2] == width]
    partial = [b for b in plan if not (len(b) == 1 and b[0][2] == width)]
    leftovers = [(int(n) + 1) % width for n in lengths if (int(n) + 1) % width]
    assert len(full) == sum((int(n) + 1) // width for n in lengths)
    assert sorted(sum(p[2] for p in b) for b in partial) == brute_force_bfd_loads(leftovers, width)
    # replay: in decreasing order, each chunk went to an open block with the least room that fits it
    where = {piece: (b, k) for b, block in enumerate(partial) for k, piece in enumerate(block)}
    loads = [0] * len(partial)
    opened: set[int] = set()
    # (ties between equal-length chunks are broken by input order, as _best_fit_decreasing documents)
    for piece in sorted(where, key=lambda p: (-p[2], p[0])):  # the chunk order: longest first, then input order
        b, k = where[piece]
        rooms = [width - loads[o] for o in opened if width - loads[o] >= piece[2]]
        if k == 0:
            assert not rooms, "opened a new block while one had room"
            opened.add(b)
        else:
            assert b in opened and width - loads[b] == min(rooms)
        loads[b] += piece[2]
        assert all(len(block) > 0 for block in partial)
    # pieces inside a block appear in decreasing length (placement order)
    assert all([p[2] for p in b] == sorted((p[2] for p in b), reverse=True) for b in partial)


def test_manifest(tmp_path):
    lengths = np.array([4, 0, 30, 7, 12, 2, 9])
    blocks, docs, manifest = pack(tmp_path, lengths, context_length=9, mode="bestfit")
    assert blocks.manifest == manifest
    real = int((lengths + 1).sum())
    assert manifest["n_blocks"] == len(blocks)
    _, segments = read_all(blocks)
    assert manifest["n_tokens"] == real == int((segments > 0).sum())
    assert manifest["pad_fraction"] == pytest.approx(1 - real / (len(blocks) * 10))
    assert manifest["pad_fraction"] == pytest.approx(float((segments == 0).mean()))
    assert manifest["context_length"] == 9 and manifest["mode"] == "bestfit"
    assert {k: manifest[k] for k in TOKENIZER} == TOKENIZER
    assert manifest["inputs"] == {"x": "y"}
    sources = {}
    for k, n in enumerate(lengths):  # pack(): document k lives in store k % 2
        row = sources.setdefault(f"s{k % 2}", {"docs": 0, "tokens": 0})
        row["docs"] += 1
        row["tokens"] += int(n) + 1
    assert manifest["sources"] == sources
    assert [s["source"] for s in manifest["stores"]] == ["s0", "s1"]
    assert manifest["stores"][0]["path"] == "../store-bestfit-0"  # relative to the block folder


@pytest.mark.parametrize("mode", MODES)
def test_empty_input_writes_zero_blocks(tmp_path, mode):
    blocks, _, manifest = pack(tmp_path, [], context_length=7, mode=mode)
    assert len(blocks) == 0 and manifest["n_blocks"] == 0 and manifest["n_tokens"] == 0
    assert manifest["pad_fraction"] == 0.0
    tokens, segments = read_all(blocks)
    assert tokens.shape == (0, 8) and segments.shape == (0, 8)


def test_load_blocks_missing(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        load_blocks(tmp_path / "nowhere")
    pack(tmp_path, [3, 4], context_length=4, mode="concat")
    (tmp_path / "concat" / "piece_doc.npy").unlink()
    with pytest.raises(PipelineError, match="piece_doc.npy"):
        load_blocks(tmp_path / "concat")
