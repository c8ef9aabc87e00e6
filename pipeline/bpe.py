"""A byte-level BPE vocabulary trained on the user's own documents (`tokenizer.name: bpe`).

Trained with Hugging Face `tokenizers` (the same byte-level BPE and GPT-2 split pattern as GPT-2's
tokenizer; EOS `<|endoftext|>` is id 0), and saved as its `tokenizer.json`, which is what
`transformers` loads. Encoding then goes through tiktoken, built from the same vocabulary: about 4x
faster than `tokenizers` here. The two pick merges by different rules (tiktoken: the lowest-ranked
resulting token; `tokenizers`: the lowest-ranked merge), which agree on vocabularies learned this
way in practice but not by construction, so `check_agreement` encodes the training sample with both
and the vocab stage keeps tiktoken only if every document gets the same ids.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Sequence

EOS_TEXT = "<|endoftext|>"


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """The printable character byte-level BPE uses for each byte (GPT-2's table), inverted."""
    from tokenizers import pre_tokenizers

    # `alphabet()` lists the 256 characters; their order here follows GPT-2's `bytes_to_unicode`
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        chars[b] = chr(b) if b in printable else chr(256 + extra)
        extra += b not in printable
    assert set(chars.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    return {c: b for b, c in chars.items()}


def train_bpe(texts: Iterable[str], vocab_size: int):
    """A `tokenizers.Tokenizer`: byte-level BPE of `vocab_size` tokens learned from `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS_TEXT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def ranks(tokenizer) -> dict[bytes, int]:
    """The vocabulary as tiktoken's mergeable ranks: each token's bytes and its id (EOS left out)."""
    decode = byte_decoder()
    return {bytes(decode[c] for c in token): i for token, i in tokenizer.get_vocab().items() if token != EOS_TEXT}


def check_agreement(tokenizer, encoding, texts: Sequence[str]) -> int:
    """How many of `texts` tiktoken's `encoding` and `tokenizer` encode differently (ordinary text;
    a text holding the EOS text itself is left out: `tokenizers` would read it as the special token)."""
    texts = [t for t in texts if EOS_TEXT not in t]
    theirs = tokenizer.encode_batch(texts, add_special_tokens=False)
    return sum(encoding.encode_ordinary(t) != e.ids for t, e in zip(texts, theirs))
