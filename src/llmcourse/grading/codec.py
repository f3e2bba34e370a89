"""Move test inputs between processes as NumPy arrays plus JSON (never pickle, never zip)."""

from __future__ import annotations

import numpy as np

from . import protocol


def encode(value, arrays: dict[str, np.ndarray], key: str):
    """Describe ``value`` as JSON; tensors and arrays go into ``arrays`` under ``key``."""
    if hasattr(value, "detach") and hasattr(value, "dtype"):
        t = value.detach().cpu()
        arr = t.float().numpy() if str(t.dtype) == "torch.bfloat16" else t.numpy()
        arrays[key] = np.array(arr)
        return {"tensor": key, "dtype": str(t.dtype), "grad": bool(value.requires_grad)}
    if isinstance(value, (list, tuple)):
        return {type(value).__name__: [encode(v, arrays, f"{key}.{i}") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        return {"dict": {str(k): encode(v, arrays, f"{key}.{k}") for k, v in value.items()}}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"cannot send a {type(value).__name__} to the grader's kernel")


def decode(desc, arrays):
    if "tensor" in desc:
        import torch

        dtype = getattr(torch, desc["dtype"].split(".", 1)[1])
        t = torch.from_numpy(np.array(arrays[desc["tensor"]])).to(dtype)
        return t.requires_grad_() if desc.get("grad") else t
    if "list" in desc:
        return [decode(d, arrays) for d in desc["list"]]
    if "tuple" in desc:
        return tuple(decode(d, arrays) for d in desc["tuple"])
    if "dict" in desc:
        return {k: decode(d, arrays) for k, d in desc["dict"].items()}
    return desc["value"]


def save(path_or_file, arrays: dict[str, np.ndarray], meta) -> None:
    protocol.save(path_or_file, arrays, meta)


def load(path, cap: int = protocol.MAX_OUTPUTS_BYTES) -> tuple[dict[str, np.ndarray], object]:
    """Arrays and JSON from a file written by :func:`save` (hostile input: capped, no zip)."""
    return protocol.load(path, cap)


def loads(data: bytes, cap: int = protocol.MAX_OUTPUTS_BYTES) -> tuple[dict[str, np.ndarray], object]:
    return protocol.loads(data, cap)
