"""Seeded bf16 tensors and a plain safetensors writer.

Each tensor is drawn from its own numpy Generator keyed by (seed, tensor name), so values do not
depend on creation order, library versions or torch's initialisers. The file is written by hand
(the format is an 8-byte length, a JSON header, raw little-endian data) to keep torch out of the
generator and the byte layout under our control.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Init = Literal["normal", "ones", "zeros", "marker"]
STD = 0.02  # the init range of the real configs (initializer_range)
MARK = 4.0  # "marker" rows: large enough that their logits (±4·Σh) beat every zero row


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    init: Init = "normal"
    # "marker": a zero matrix whose row rows[0] is +MARK and row rows[1] is -MARK. As an lm_head it
    # makes greedy decoding emit only those two tokens (one of ±Σh is positive, every other logit 0)
    # — output that proves which head was used.
    rows: tuple[int, ...] = ()


def _rng(seed: int, name: str) -> np.random.Generator:
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, key])


def draw(spec: TensorSpec, seed: int) -> np.ndarray:
    """float32 values of one tensor."""
    if spec.init == "ones":
        return np.ones(spec.shape, dtype=np.float32)
    if spec.init == "zeros":
        return np.zeros(spec.shape, dtype=np.float32)
    if spec.init == "marker":
        values = np.zeros(spec.shape, dtype=np.float32)
        values[spec.rows[0]] = MARK
        values[spec.rows[1]] = -MARK
        return values
    return _rng(seed, spec.name).normal(0.0, STD, size=spec.shape).astype(np.float32)


def bf16_bytes(values: np.ndarray) -> bytes:
    """Round float32 to bfloat16 (nearest, ties to even) and return little-endian bytes."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4")
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return rounded.astype("<u2").tobytes()


def safetensors_bytes(specs: Iterable[TensorSpec], seed: int) -> bytes:
    """A complete bf16 .safetensors file, tensors in name order."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    chunks: list[bytes] = []
    offset = 0
    for spec in sorted(specs, key=lambda s: s.name):
        if spec.name in header:
            raise ValueError(f"duplicate tensor {spec.name}")
        data = bf16_bytes(draw(spec, seed))
        header[spec.name] = {
            "data_offsets": [offset, offset + len(data)],
            "dtype": "BF16",
            "shape": list(spec.shape),
        }
        chunks.append(data)
        offset += len(data)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8-byte alignment with spaces
    return len(raw).to_bytes(8, "little") + raw + b"".join(chunks)
