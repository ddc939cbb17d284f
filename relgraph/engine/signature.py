"""Whether a node's tensors are the very ones a memo was made from: a tensor signature."""

from __future__ import annotations

import weakref

import torch


def tensor_signature(tensors: dict[str, torch.Tensor]) -> tuple | None:
    """What identifies the current values of ``tensors``: per name a weak reference to the
    tensor, its storage address and its version counter (bumped by every in-place edit).
    ``None`` when a tensor has no version counter (an inference-mode tensor)."""
    signature = []
    for name, t in sorted(tensors.items()):
        if t.is_inference():
            return None
        signature.append((name, weakref.ref(t), t.data_ptr(), t._version))
    return tuple(signature)


def same_tensors(signature: tuple, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether ``tensors`` still holds the very tensors of ``signature``, unedited."""
    if len(signature) != len(tensors):
        return False
    for name, ref, pointer, version in signature:
        t = tensors.get(name)
        # a weak reference: a replaced tensor that was freed cannot be mistaken for a new one
        # that happens to reuse its id and memory
        if t is None or ref() is not t or t.data_ptr() != pointer or t._version != version:
            return False
    return True
