"""What a model spec says about its weights, without torch: a device that runs artifacts reads it too."""
from __future__ import annotations

RANDOM_PREFIX = "random:"
# The checkpoint whose architecture `random:SEED` builds, and the one to name where trained weights are needed.
TRAINED_CHECKPOINT = "nvidia/groupvit-gcc-yfcc"


def is_random(spec: str) -> bool:
    """A `random:SEED` spec: seeded random weights. A checkpoint path is not known to be random, whatever it holds."""
    return spec.startswith(RANDOM_PREFIX)
