"""Subnormal floats flushed to 0 while a reward model fits (:func:`flush_subnormals`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def flush_subnormals() -> Iterator[None]:
    """Inside the block, this thread's CPU treats float results and inputs below float32's smallest
    normal number (~1.2e-38) as 0; the mode it had is restored on leaving.

    Why: a Bradley-Terry model confident about a pair gets its gradient from the sigmoid's tail
    (``sigmoid(-D)`` for return margins ``D`` past ~87), a subnormal number, which backward carries
    through every layer, and x86 CPUs compute on subnormals through slow microcode. A fit on 200
    pairs of random CartPole play (episode lengths make the margins) took 3.7 s of CPU, and 2.4 s
    with them flushed, to the same model bit for bit; on the labels of real CartPole, Acrobot and
    MuJoCo runs nothing changes
    (``benchmarks/fit_subnormals.py``; docs/benchmarks.md, "Subnormal gradients").
    """
    was_on = flushing_subnormals()
    if not was_on:
        torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if not was_on:
            torch.set_flush_denormal(False)


def flushing_subnormals() -> bool:
    # torch can set the mode but not read it: a subnormal that comes out as 0 says it is on.
    return torch.tensor([1e-39], dtype=torch.float32).mul_(1.0).item() == 0.0
