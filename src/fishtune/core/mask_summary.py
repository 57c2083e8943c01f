"""What a mask holds, in a few kilobytes: where its entries sit, and a sketch for overlaps between runs.

`summarise(mask, sizes, head)` counts the selected entries per *layer* (``embeddings``, ``layer<i>``, ``pooler``,
``head``, ``other``) and per *kind* of parameter (``word_emb``, ``position_emb``, ``token_type_emb``, ``attn_q``,
``attn_k``, ``attn_v``, ``attn_qkv`` (a fused projection), ``attn_o``, ``ffn_in``, ``ffn_out``, ``layernorm``,
``bias`` (the biases of the attention and FFN projections), ``pooler``, ``head``, ``other``), from parameter
names alone (BERT, RoBERTa, DistilBERT, GPT-2 and Llama spellings; `layer_of`, `kind_of`). Each entry falls in
exactly one layer and one kind, so either set of counts adds up to the mask's size.

The sketch is a bottom-k MinHash: the `SKETCH_SIZE` smallest 64-bit hashes of the mask's entries. An entry is
identified by its parameter's name and its row-major flat index in that tensor, and hashed as
``splitmix64(fnv1a64(name) + index)`` (mod 2^64): the same entry of the same model gets the same hash in
every run, whatever the order of the parameters or the task head. `jaccard` compares two sketches: exact when
both masks have at most `SKETCH_SIZE` entries (the sketch is then the whole set), otherwise the bottom-k
estimate with its standard error sqrt(J(1-J)/k). Pure computation: no model, only names and a `Mask`;
importing it imports numpy alone (the report reads the summaries with it).
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # no torch at import: the report reads sketches with numpy alone
    from .masks import Mask

__all__ = ["SKETCH_SIZE", "LAYER_ORDER", "KIND_ORDER", "layer_of", "kind_of", "entry_hashes", "sketch",
           "encode_sketch", "decode_sketch", "jaccard", "exact_jaccard", "summarise"]

SKETCH_SIZE = 4096
KIND_ORDER = ("word_emb", "position_emb", "token_type_emb", "attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o",
              "ffn_in", "ffn_out", "layernorm", "bias", "pooler", "head", "other")
LAYER_ORDER = ("embeddings", "layer<i>", "pooler", "head", "other")  # layer<i>: one per block, in index order

_BLOCK = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)\.")
_KINDS = (  # (kind, pattern over the parameter name), first match wins; layernorm and pooler before bias
    ("word_emb", r"word_embeddings|embed_tokens|\bwte\b"),
    ("position_emb", r"position_embeddings|\bwpe\b"),
    ("token_type_emb", r"token_type_embeddings"),
    ("layernorm", r"layernorm|layer_norm|\bln_|\bnorm\b|_norm\b"),
    ("pooler", r"\bpooler\b"),
    ("bias", r"\.bias$"),
    ("attn_q", r"\bquery\b|\bq_proj\b|\bq_lin\b"),
    ("attn_k", r"\bkey\b|\bk_proj\b|\bk_lin\b"),
    ("attn_v", r"\bvalue\b|\bv_proj\b|\bv_lin\b"),
    ("attn_qkv", r"\bc_attn\b"),
    ("attn_o", r"attention\.output\.dense|\bo_proj\b|\bout_lin\b|\battn\.c_proj\b"),
    ("ffn_in", r"intermediate\.dense|\bup_proj\b|\bgate_proj\b|\bc_fc\b|\blin1\b"),
    ("ffn_out", r"\boutput\.dense|\bdown_proj\b|\bmlp\.c_proj\b|\blin2\b"),
)
_KIND_RES = tuple((k, re.compile(p, re.IGNORECASE)) for k, p in _KINDS)
_MASK64 = (1 << 64) - 1


def layer_of(name: str, head: Iterable[str] = ()) -> str:
    """``head`` for the task head's tensors, ``layer<i>`` inside block i, else ``embeddings``, ``pooler`` or
    ``other``."""
    if name in set(head):
        return "head"
    if m := _BLOCK.search(name):
        return f"layer{int(m.group(1))}"
    low = name.lower()
    if "embed" in low or re.search(r"\bwte\b|\bwpe\b", low) or re.search(r"(^|\.)embeddings\.", low):
        return "embeddings"
    if "pooler" in low:
        return "pooler"
    return "other"


def kind_of(name: str, head: Iterable[str] = ()) -> str:
    """The kind of parameter ``name`` is (see the module docstring); ``other`` when no rule matches."""
    if name in set(head):
        return "head"
    for kind, pattern in _KIND_RES:
        if pattern.search(name):
            return kind
    return "other"


def _fnv1a64(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) & _MASK64
    return h


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def entry_hashes(name: str, indices) -> np.ndarray:
    """The 64-bit hashes of entries ``indices`` (flat, row-major) of parameter ``name``."""
    idx = np.asarray(indices, dtype=np.uint64).reshape(-1)
    with np.errstate(over="ignore"):
        return _splitmix64(idx + np.uint64(_fnv1a64(name)))


def sketch(mask: Mask, k: int = SKETCH_SIZE) -> np.ndarray:
    """The ``k`` smallest entry hashes of ``mask`` (all of them when it has at most k entries), sorted."""
    if k < 1:
        raise ValueError(f"k: a sketch keeps at least one hash, got {k}")
    parts = [entry_hashes(n, i.cpu().numpy()) for n, i in mask.indices.items()]
    values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    if values.size > k:
        values = np.partition(values, k - 1)[:k]
    return np.sort(values)


def encode_sketch(values: np.ndarray) -> str:
    """Sorted uint64 hashes as text: base64 of the LEB128 varints of their successive differences."""
    values = np.sort(np.asarray(values, dtype=np.uint64))
    out = bytearray()
    prev = 0
    for v in values.tolist():
        delta, prev = v - prev, v
        while True:
            byte = delta & 0x7F
            delta >>= 7
            out.append(byte | (0x80 if delta else 0))
            if not delta:
                break
    return base64.b64encode(bytes(out)).decode("ascii")


def decode_sketch(text: str) -> np.ndarray:
    """The sorted uint64 hashes `encode_sketch` wrote."""
    raw = np.frombuffer(base64.b64decode(text.encode("ascii")), dtype=np.uint8)
    if raw.size == 0:
        return np.zeros(0, dtype=np.uint64)
    last = raw < 0x80  # a varint's last byte
    if not last[-1]:
        raise ValueError("sketch: truncated (its last number is incomplete)")
    starts = np.concatenate([[0], np.flatnonzero(last)[:-1] + 1])
    position = np.arange(raw.size) - np.repeat(starts, np.diff(np.append(starts, raw.size)))
    with np.errstate(over="ignore"):
        parts = (raw & 0x7F).astype(np.uint64) << (np.uint64(7) * position.astype(np.uint64))
        return np.cumsum(np.add.reduceat(parts, starts), dtype=np.uint64)


def jaccard(a: np.ndarray, count_a: int, b: np.ndarray, count_b: int, k: int = SKETCH_SIZE
            ) -> tuple[float, float, bool]:
    """Jaccard |A∩B| / |A∪B| of two masks from their sketches and sizes: (value, standard error, exact).

    Exact (standard error 0) when both sketches hold their whole mask; otherwise the bottom-k estimate: of
    the k smallest hashes of the union of the two sketches, the share present in both."""
    if count_a == 0 and count_b == 0:
        return 1.0, 0.0, True
    complete = len(a) == count_a and len(b) == count_b
    if complete:
        inter = np.intersect1d(a, b, assume_unique=True).size
        return inter / (count_a + count_b - inter), 0.0, True
    union = np.union1d(a, b)[:k]
    both = np.isin(union, a, assume_unique=True) & np.isin(union, b, assume_unique=True)
    est = float(both.mean())
    return est, math.sqrt(est * (1 - est) / union.size), False


def exact_jaccard(a: Mask, b: Mask) -> float:
    """|A∩B| / |A∪B| of two masks' entries, from the masks themselves."""
    inter = 0
    for name, idx in a.indices.items():
        if name in b.indices:
            inter += int(np.intersect1d(idx.numpy(), b.indices[name].numpy(), assume_unique=True).size)
    union = a.count + b.count - inter
    return inter / union if union else 1.0


def summarise(mask: Mask, sizes: Mapping[str, int], head: Iterable[str] = (), k: int = SKETCH_SIZE) -> dict:
    """A mask's summary as plain data: its size, the entries per layer and per kind (counts of the mask and
    sizes of the universe ``sizes``, parameter name -> number of entries), and its sketch (encoded)."""
    head = list(head)
    layers: dict[str, int] = {}
    kinds: dict[str, int] = {}
    layer_sizes: dict[str, int] = {}
    kind_sizes: dict[str, int] = {}
    for name, size in sizes.items():
        layer, kind = layer_of(name, head), kind_of(name, head)
        count = int(mask.indices[name].numel()) if name in mask.indices else 0
        for table, key, n in ((layers, layer, count), (kinds, kind, count), (layer_sizes, layer, size),
                              (kind_sizes, kind, size)):
            table[key] = table.get(key, 0) + n
    unknown = sorted(set(mask.indices) - set(sizes))
    if unknown:
        raise ValueError(f"mask: parameter {unknown[0]!r} is not among the model's parameters")
    values = sketch(mask, k)
    return {"count": mask.count, "universe": int(sum(sizes.values())), "layers": layers, "kinds": kinds,
            "layer_sizes": layer_sizes, "kind_sizes": kind_sizes,
            "sketch": {"hash": "splitmix64(fnv1a64(name) + index)", "k": k, "size": int(values.size),
                       "values": encode_sketch(values)}}
