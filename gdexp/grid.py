"""A table sweep's grid as axes (`tracking.record=table`): configs by index, trained in chunks.

A grid of 10^6 configs is never a list of 10^6 composed configs (a millisecond each). It is a
few base configs (one per set of config-group choices, composed by Hydra) times the product of
the swept keys' values. Config `i` is a position in that product, in this order: base outermost,
then the keys that change the training loop's structure (`epochs`, `method.batch_size`, ...), then
the keys that only change numbers (`step_size`, `seed`, init, data: `VECTOR_KEYS`), each group in
the order the sweep gave them, the last varying fastest. A block is one base with one value of
every structural key: the configs of a block train together, in chunks of contiguous indices, so
a chunk is the same on every launcher and for every attempt (what resume counts on).

Nothing here imports torch: the grid is built and checked before training starts.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from gdexp.config import CHECKS, ConfigError, range_problem, schema_keys

# Keys whose values train side by side in one tensor computation; any other swept key changes
# the loop (its values make blocks).
VECTOR_KEYS = (
    "step_size",
    "seed",
    "init.w",
    "init.b",
    "convergence_tolerance",
    "data.x_start",
    "data.x_step",
    "data.slope",
    "data.intercept",
    "data.noise_std",
)
# The data a config trains on, besides its seed and the shared n_points: data per distinct tuple.
DATA_KEYS = ("data.x_start", "data.x_step", "data.slope", "data.intercept", "data.noise_std")
DEFAULT_CHUNK = 10_000  # configs trained together: ~10 MB of tensors at the phase map's settings


@dataclass(frozen=True)
class Axis:
    key: str  # a leaf key of the schema: step_size, method.batch_size
    values: tuple[Any, ...]  # typed as the config holds them, in the sweep's order


@dataclass(frozen=True)
class Chunk:
    start: int  # config indices [start, stop), within one block
    stop: int
    block: int

    def __len__(self) -> int:
        return self.stop - self.start


def _typed_values(base: DictConfig, key: str, values: Sequence[Any], line: str) -> tuple:
    """Each value as the config holds it (`1` for a float key is 1.0, `float64` a DType), every
    range problem named before anything runs."""
    scratch = copy.deepcopy(base)
    allowed, ok = CHECKS.get(key, ("", lambda value: True))
    typed, problems = [], []
    for value in values:
        try:
            OmegaConf.update(scratch, key, value, merge=True)
        except Exception as error:  # a type composition would refuse the same way
            raise ConfigError(f"{line}: {key}={value!r}: {str(error).splitlines()[0]}") from None
        converted = OmegaConf.select(scratch, key)
        if not ok(converted):
            problems.append(range_problem(key, converted, allowed))
        typed.append(converted)
    if problems:
        raise ConfigError(
            "Invalid sweep, no run was started:\n  " + "\n  ".join(dict.fromkeys(problems))
        )
    return tuple(typed)


class TableGrid:
    """The configs of a table sweep: `bases` (one composed config per set of config-group
    choices, its label the group overrides) times the product of `axes`."""

    def __init__(self, bases: Sequence[tuple[str, DictConfig]], axes: Sequence[Axis]) -> None:
        leaves = {k.key for k in schema_keys()}
        for axis in axes:
            if axis.key not in leaves:
                raise ConfigError(
                    f"{axis.key}: a table sweep sweeps single keys (step_size=..., "
                    f"data.noise_std=...), not {axis.key!r}"
                )
        self.bases = list(bases)
        self.axes = [a for a in axes if a.key not in VECTOR_KEYS] + [
            a for a in axes if a.key in VECTOR_KEYS
        ]
        self.structural = [a for a in self.axes if a.key not in VECTOR_KEYS]
        self.vector = [a for a in self.axes if a.key in VECTOR_KEYS]
        self.block_size = math.prod(len(a.values) for a in self.vector)
        self._blocks: dict[int, DictConfig] = {}
        self.n_blocks = len(self.bases) * math.prod(len(a.values) for a in self.structural)

    @classmethod
    def build(
        cls, bases: Sequence[tuple[str, DictConfig]], swept: Sequence[tuple[str, Sequence, str]]
    ) -> TableGrid:
        """From composed bases and the swept keys as (key, values, the override as typed)."""
        first = bases[0][1]
        axes = [Axis(key, _typed_values(first, key, values, line)) for key, values, line in swept]
        return cls(bases, axes)

    def __len__(self) -> int:
        return self.n_blocks * self.block_size

    def identity(self) -> str:
        """The grid's configs, as a hash: the bases' resolved configs and the typed axes."""
        tree = {
            "bases": [
                [label, OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)]
                for label, cfg in self.bases
            ],
            "axes": [
                [a.key, [str(v.name if hasattr(v, "name") else v) for v in a.values]]
                for a in self.axes
            ],
        }
        for _, cfg in tree["bases"]:
            cfg.get("tracking", {}).clear()  # where it is tracked is not what it is
        text = json.dumps(tree, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def describe(self) -> dict[str, str]:
        """Each swept key (and the config groups) in a few words: `100 values: 0.001 … 1`."""
        described = {}
        if len(self.bases) > 1:
            described["groups"] = ", ".join(label for label, _ in self.bases)
        for axis in self.axes:
            shown = [_show(v) for v in axis.values]
            described[axis.key] = (
                ", ".join(shown)
                if len(shown) <= 8
                else f"{len(shown)} values: {', '.join(shown[:3])} … {shown[-1]}"
            )
        return described

    # --- blocks and chunks --------------------------------------------------------------------

    def block_config(self, block: int) -> DictConfig:
        """Block `block`'s config: its base with its structural values (vector keys: the base's).
        Made once; not to be changed."""
        if block not in self._blocks:
            self._blocks[block] = self._make_block_config(block)
        return self._blocks[block]

    def _make_block_config(self, block: int) -> DictConfig:
        sizes = [len(self.bases)] + [len(a.values) for a in self.structural]
        base_index, *value_indices = np.unravel_index(block, sizes)
        cfg = copy.deepcopy(self.bases[int(base_index)][1])
        for axis, index in zip(self.structural, value_indices, strict=True):
            OmegaConf.update(cfg, axis.key, axis.values[int(index)], merge=True)
        return cfg

    def chunks(self, size: int = DEFAULT_CHUNK) -> list[Chunk]:
        size = max(1, int(size))
        return [
            Chunk(start, min(start + size, (block + 1) * self.block_size), block)
            for block in range(self.n_blocks)
            for start in range(block * self.block_size, (block + 1) * self.block_size, size)
        ]

    def vector_columns(self, chunk: Chunk) -> dict[str, np.ndarray]:
        """Every VECTOR_KEYS value of the chunk's configs, one array each (unswept: the block's)."""
        cfg = self.block_config(chunk.block)
        positions = np.arange(chunk.start, chunk.stop) - chunk.block * self.block_size
        sizes = [len(a.values) for a in self.vector]
        indices = np.unravel_index(positions, sizes) if sizes else ()
        columns = {key: np.full(len(chunk), OmegaConf.select(cfg, key)) for key in VECTOR_KEYS}
        for axis, index in zip(self.vector, indices, strict=True):
            columns[axis.key] = np.asarray(axis.values)[index]
        columns["seed"] = columns["seed"].astype(np.int64)
        for key in VECTOR_KEYS:
            if key != "seed":
                columns[key] = columns[key].astype(np.float64)
        return columns

    def iter_blocks(self) -> Iterator[tuple[int, DictConfig]]:
        for block in range(self.n_blocks):
            yield block, self.block_config(block)


def _show(value: Any) -> str:
    if hasattr(value, "name"):
        return str(value.name)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).lower() if isinstance(value, bool) else str(value)
