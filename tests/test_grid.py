"""A table sweep's grid as axes (gdexp.grid) and its chunks' rows (gdexp.run.train_table_chunk):
the order of configs, the chunks, the typed values, and each row equal to the same config run
alone."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
import torch
from omegaconf import OmegaConf

from gdexp import table
from gdexp.config import ConfigError, MethodConfig, RunConfig
from gdexp.data import make_run_data
from gdexp.grid import TableGrid
from gdexp.outcome import summarize
from gdexp.run import ChunkData, train_table_chunk
from gdexp.train import train


def base(name: str = "minibatch", batch_size: int | None = 10, **keys):
    cfg = OmegaConf.structured(RunConfig(method=MethodConfig(name=name, batch_size=batch_size)))
    for key, value in keys.items():
        OmegaConf.update(cfg, key.replace("__", "."), value)
    return cfg


def grid(*swept, bases=None) -> TableGrid:
    return TableGrid.build(bases or [("method=minibatch", base())], [(k, v, k) for k, v in swept])


def test_configs_are_ordered_structure_first_and_chunks_stay_in_a_block():
    g = grid(
        ("step_size", [0.1, 0.2, 0.3]),
        ("method.batch_size", [1, 10]),
        ("seed", [0, 1]),
        ("method.shuffle", [False, True]),
    )
    assert len(g) == 24 and g.n_blocks == 4 and g.block_size == 6
    # Structural keys outermost (in the order given), then the value keys (the last fastest).
    assert [a.key for a in g.axes] == ["method.batch_size", "method.shuffle", "step_size", "seed"]
    assert [(c.method.batch_size, c.method.shuffle) for c in map(g.block_config, range(4))] == [
        (1, False), (1, True), (10, False), (10, True),
    ]  # fmt: skip
    chunks = g.chunks(4)
    assert [(c.start, c.stop, c.block) for c in chunks] == [
        (0, 4, 0), (4, 6, 0), (6, 10, 1), (10, 12, 1), (12, 16, 2), (16, 18, 2), (18, 22, 3),
        (22, 24, 3),
    ]  # fmt: skip
    columns = g.vector_columns(chunks[1])  # configs 4, 5 of block 0: step 0.3, seeds 0 and 1
    assert columns["step_size"].tolist() == [0.3, 0.3] and columns["seed"].tolist() == [0, 1]
    assert columns["init.w"].tolist() == [-10.0, -10.0]  # unswept: the block's value


def test_values_are_typed_and_checked_before_anything_runs():
    g = grid(("step_size", [1, 2]), ("dtype", ["float32", "float64"]))
    assert g.axes[1].values == (1.0, 2.0) and all(isinstance(v, float) for v in g.axes[1].values)
    assert [v.name for v in g.axes[0].values] == ["float32", "float64"]
    with pytest.raises(ConfigError, match=r"step_size=-1.0 is invalid"):
        grid(("step_size", [0.1, -1]))
    with pytest.raises(ConfigError, match="seed"):
        grid(("seed", ["ten"]))
    with pytest.raises(ConfigError, match="single keys"):
        TableGrid([("m", base())], [__import__("gdexp.grid").grid.Axis("data", ({"slope": 1.0},))])


def test_the_identity_is_the_grid_not_where_it_is_tracked():
    one = grid(("step_size", [0.1, 0.2]))
    assert one.identity() == grid(("step_size", [0.1, 0.2])).identity()
    assert one.identity() != grid(("step_size", [0.1, 0.3])).identity()
    assert one.identity() != grid(("step_size", [0.2, 0.1])).identity()  # another order
    elsewhere = [("method=minibatch", base(tracking__experiment="other"))]
    assert one.identity() == grid(("step_size", [0.1, 0.2]), bases=elsewhere).identity()
    assert (
        one.identity() != grid(("step_size", [0.1, 0.2]), bases=[("x", base(epochs=3))]).identity()
    )
    assert one.describe() == {"step_size": "0.1, 0.2"}
    many = grid(("seed", list(range(100))))
    assert many.describe() == {"seed": "100 values: 0, 1, 2 … 99"}


def alone(cfg, device: str = "cpu") -> dict:
    data = make_run_data(cfg)
    trajectory = train(cfg, data, device=device)
    return table.run_row(cfg, trajectory, summarize(trajectory, data, cfg.convergence_tolerance),
                         None, torch.device(device).type)  # fmt: skip


def same(a, b) -> bool:
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return a == b


def test_each_row_of_a_chunk_is_the_config_run_alone():
    g = TableGrid.build(
        [("method=sgd", base("sgd", 1)), ("method=minibatch", base("minibatch", 10))],
        [
            ("method.shuffle", [False, True], "method.shuffle=false,true"),
            ("dtype", ["float32", "float64"], "dtype=float32,float64"),
            ("step_size", [0.001, 0.05, 0.3, 1.5], "step_size=..."),
            ("seed", [0, 3], "seed=0,3"),
            ("data.noise_std", [0.0, 0.4], "data.noise_std=0,0.4"),
            ("init.w", [-10.0, 3.0], "init.w=-10,3"),
        ],
    )
    data = ChunkData()
    parts = [train_table_chunk(g, chunk, "parent", data) for chunk in g.chunks(7)]
    rows = pa.concat_tables(parts).to_pylist()
    assert [r["config_index"] for r in rows] == list(range(len(g)))
    assert {r["outcome"] for r in rows} >= {"converged", "diverged"}
    assert any(r["final_loss"] == math.inf for r in rows)
    for index in range(0, len(g), 5):
        row = rows[index]
        chunk = next(c for c in g.chunks(7) if c.start <= index < c.stop)
        cfg = g.block_config(chunk.block)
        cfg.step_size, cfg.seed = row["step_size"], row["seed"]
        cfg.data.noise_std, cfg.init.w = row["noise_std"], row["init_w"]
        expected = alone(cfg)
        for column, value in expected.items():
            if column not in ("parent_run_id", "config_index"):
                assert same(row[column], value), (index, column, row[column], value)
        assert row["parent_run_id"] == "parent" and row["run_id"] is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
def test_a_cuda_table_agrees_with_the_cpu_table():
    swept = [
        ("method.batch_size", [1, 10, 100], "b"),
        ("method.shuffle", [False, True], "s"),
        ("step_size", np.geomspace(1e-3, 1, 50).tolist(), "lr"),
        ("seed", list(range(20)), "seed"),
    ]
    tables = {}
    for device in ("cpu", "cuda"):
        g = TableGrid.build([("m", base(device=device))], swept)
        tables[device] = pa.concat_tables(
            [train_table_chunk(g, c, None) for c in g.chunks()]
        ).to_pandas()
    cpu, cuda = tables["cpu"], tables["cuda"]
    assert set(cuda["device"]) == {"cuda"} and set(cpu["device"]) == {"cpu"}
    assert (cpu["outcome"] == cuda["outcome"]).mean() >= 0.999
    # Where training settles, float32 results agree to float32's tolerance. Where it does not
    # (SGD bouncing at 1e14, diverging), rounding differences between devices are amplified
    # ~3e7-fold within an epoch: there only the outcome is compared.
    settled = cpu["outcome"].isin(["converged", "converging"]) & (cpu["outcome"] == cuda["outcome"])
    np.testing.assert_allclose(
        cuda["final_loss"][settled], cpu["final_loss"][settled], rtol=1e-4, atol=1e-6
    )
