"""Which peers to talk to. The random generator is injected so tests are deterministic."""

from __future__ import annotations

import random
from collections.abc import Sequence


def choose(candidates: Sequence[str], *, rng: random.Random, k: int = 1) -> list[str]:
    """Up to k distinct peers chosen uniformly: the anti-entropy partner(s) of a round."""
    if k <= 0 or not candidates:
        return []
    return rng.sample(list(candidates), min(k, len(candidates)))
