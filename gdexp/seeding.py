"""Every random source of a run, derived from its one `seed` in one place."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class RandomStreams:
    data: torch.Generator  # the noise in y
    shuffle: torch.Generator  # the order of samples within each epoch (mini-batch with shuffle)


def random_streams(seed: int) -> RandomStreams:
    # The data stream is torch's own for `seed`, so seed 0 draws the tutorial's noise
    # (torch.manual_seed(0); torch.randn(100, 1)). The shuffle stream is a child seed of its own,
    # so that turning shuffling on never changes the data.
    shuffle_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1, dtype=np.uint64)[0] >> 1)
    return RandomStreams(
        data=torch.Generator().manual_seed(seed),
        shuffle=torch.Generator().manual_seed(shuffle_seed),
    )
