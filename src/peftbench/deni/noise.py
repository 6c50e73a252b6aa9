"""Noisy copies of a model's weights and their uniform average: NI's and DE's parameter arithmetic.

A copy adds to each tensor p the noise ε ~ N(0, 1) · sqrt(σ²/t) · std(p), with t the global step
(NI: the noise shrinks as training goes on), or ε ~ N(0, 1) · sqrt(σ²) · std(p) for DE (no decay).
Scaling by the tensor's own std keeps the perturbation relative to each tensor's magnitude, so one σ²
fits embeddings, LoRA factors and norms alike.
"""

from __future__ import annotations

import math
from collections.abc import Container, Mapping, Sequence

import torch

_SEED_STRIDE = 1_000_003  # a prime above any sensible member count: (seed, member) pairs never collide
_SEED_OFFSET = 0x5DE1  # keeps member streams away from the plain `seed` a run uses for data and init


def noise_generator(seed: int, member: int) -> torch.Generator:
    """The CPU generator of one member's noise, seeded from (seed, member) alone.

    Separate from the global torch RNG so that the noise stream and the run's other randomness (data
    order, dropout, initialisation) cannot shift each other: changing one leaves the other as it was.
    Make one per copy (member 1..K−1) once per run and reuse it across NI cycles, so every cycle draws
    fresh noise and a rerun with the same seed draws the same.
    """
    if not 0 <= member < _SEED_STRIDE:
        raise ValueError(f"member must be in [0, {_SEED_STRIDE}), got {member}")
    generator = torch.Generator(device="cpu")
    generator.manual_seed((seed * _SEED_STRIDE + member + _SEED_OFFSET) % 2**64)
    return generator


def noisy_copy(
    params: Mapping[str, torch.Tensor], *, sigma2: float, generator: torch.Generator, step: int | None,
    targets: Container[str] | None = None,
) -> dict[str, torch.Tensor]:
    """New tensors with the noise added (the inputs are left as they were), in `params`' order.

    `targets` names the tensors that get noise (None: all); the others are copied unchanged and draw
    nothing from the generator.

    `step` is the global step t >= 1 for NI's decaying noise sqrt(σ²/t), or None for DE's sqrt(σ²).
    std(p) is over all of p's elements, unbiased (torch's default). A tensor with one element, or with
    zero std (e.g. a LoRA B still at its zero init), has no scale to be relative to: it is copied
    unchanged and draws nothing from the generator. The noise is drawn on CPU in float32 from
    `generator`, in `params`' iteration order, then moved to the tensor's device; the sum is taken in
    at least float32 and cast to the tensor's dtype — so it depends neither on the device nor on the
    global RNG.
    """
    if not sigma2 >= 0.0 or not math.isfinite(sigma2):
        raise ValueError(f"sigma2 must be finite and >= 0, got {sigma2}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
        raise ValueError(f"step must be an int >= 1 (the global step) or None (DE), got {step!r}")
    factor = math.sqrt(sigma2 if step is None else sigma2 / step)
    out: dict[str, torch.Tensor] = {}
    for name, p in params.items():
        if not p.is_floating_point():
            raise ValueError(f"{name}: noise needs a floating-point tensor, got {p.dtype}")
        p = p.detach()
        if targets is not None and name not in targets:
            out[name] = p.clone()
            continue
        std = p.float().std().item() if p.numel() > 1 else 0.0
        if not math.isfinite(std):
            raise ValueError(f"{name}: its std is {std}; the tensor holds non-finite values")
        if std == 0.0 or factor == 0.0:
            out[name] = p.clone()
            continue
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float32, device="cpu")
        noise = noise.mul_(factor * std).to(p.device)
        work = torch.promote_types(p.dtype, torch.float32)
        out[name] = (p.to(work) + noise.to(work)).to(p.dtype)
    return out


def average(members: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform mean of the members' tensors, key by key (in the first member's order): summed in
    float64 and divided once, then cast back to the dtype, so the mean is as exact as the dtype allows
    whatever K is. Keys, shapes and dtypes must match exactly: a mismatch is a bug upstream."""
    if not members:
        raise ValueError("average of no members")
    first = members[0]
    for index, member in enumerate(members[1:], start=1):
        if set(member) != set(first):
            diff = sorted(set(member) ^ set(first))
            raise ValueError(f"member {index} has different keys than member 0: {diff[:5]}")
        for name, tensor in member.items():
            if tensor.shape != first[name].shape or tensor.dtype != first[name].dtype:
                raise ValueError(
                    f"member {index}: {name} is {tuple(tensor.shape)} {tensor.dtype}, "
                    f"member 0 has {tuple(first[name].shape)} {first[name].dtype}"
                )
    out: dict[str, torch.Tensor] = {}
    for name, tensor in first.items():
        total = torch.zeros(tensor.shape, dtype=torch.float64, device=tensor.device)
        for member in members:
            total += member[name].detach().to(device=tensor.device, dtype=torch.float64)
        out[name] = (total / len(members)).to(tensor.dtype)
    return out
