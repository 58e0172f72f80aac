"""Resampling: sizes, no duplicates, cluster proportions following the noisy histogram, shortfall."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dpinstruct.io.artifacts import Outputs, read_metadata, table_metadata, write_parquet
from stages import resample


def build(tmp_path, sizes, noisy):
    """A pool of sum(sizes) instructions in len(sizes) clusters and a noisy histogram."""
    ids = [f"g{i:04d}" for i in range(sum(sizes))]
    labels = np.repeat(np.arange(len(sizes)), sizes).astype(np.int32)
    order = np.random.default_rng(1).permutation(len(ids))  # clusters interleaved in the pool
    ids, labels = [ids[i] for i in order], labels[order]
    for path, table in ((resample.POOL, pa.table({"id": ids, "instruction": [f"text {i}" for i in ids]})),
                        (resample.ASSIGNMENTS, pa.table({"id": ids, "cluster": labels})),
                        (resample.NOISY, pa.table({"cluster": np.arange(len(noisy), dtype=np.int32),
                                                   "noisy_count": np.asarray(noisy, dtype=float)}))):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(table, path, table.schema, table_metadata("test", "x", "dp"))


def run(target=None, seed=0, share=1.0):
    with Outputs() as out:
        return resample.resample({"resample": {"target_size": target, "seed": seed, "max_pool_share": share}}, out)


def test_release_follows_the_noisy_histogram(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build(tmp_path, sizes=[100, 100, 100, 5], noisy=[50.0, 30.0, 0.0, 20.0])
    metrics = run()
    release = pd.read_parquet(resample.RELEASE)
    assert metrics["target_size"] == 100 and metrics["target_from"] == "noisy_total"
    assert release.groupby("cluster").size().to_dict() == {0: 50, 1: 30, 3: 5}  # cluster 3 is short by 15
    assert metrics["shortfall"] == 15 and metrics["short_clusters"] == 1 and metrics["released"] == 85
    assert release.id.is_unique and release.instruction.is_unique
    assert read_metadata(resample.RELEASE)["privacy"] == "dp"
    assert json.loads(Path(resample.METRICS).read_text()) == metrics
    pool = pd.read_parquet(resample.ASSIGNMENTS).set_index("id").cluster
    assert (pool.loc[release.id].to_numpy() == release.cluster.to_numpy()).all()


def test_proportions_at_scale_and_seeded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    noisy = np.random.default_rng(2).gamma(2.0, 50.0, size=40)
    build(tmp_path, sizes=[400] * 40, noisy=noisy)
    run(target=3000, seed=0)
    first = pd.read_parquet(resample.RELEASE)
    counts = first.groupby("cluster").size().reindex(range(40), fill_value=0).to_numpy()
    assert np.array_equal(counts, np.floor(3000 * noisy / noisy.sum()).astype(int))
    run(target=3000, seed=0)
    assert pd.read_parquet(resample.RELEASE).equals(first)
    run(target=3000, seed=1)
    assert not pd.read_parquet(resample.RELEASE).equals(first)


def test_target_is_capped_at_a_share_of_the_pool(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build(tmp_path, sizes=[100, 100], noisy=[300.0, 100.0])
    metrics = run(share=0.5)  # wants 400 of a 200-row pool: 100, split 3:1 by the histogram
    assert (metrics["target_requested"], metrics["target_size"], metrics["capped_by_max_pool_share"]) == (400, 100, True)
    assert pd.read_parquet(resample.RELEASE).groupby("cluster").size().to_dict() == {0: 75, 1: 25}
    from dpinstruct.io.errors import ConfigError

    with pytest.raises(ConfigError, match="max_pool_share"):
        run(share=0.0)


def test_mismatched_assignments_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build(tmp_path, sizes=[3, 3], noisy=[1.0, 1.0])
    table = pa.table({"id": ["x"] * 6, "cluster": np.zeros(6, dtype=np.int32)})
    write_parquet(table, resample.ASSIGNMENTS, table.schema, table_metadata("test", "x", "dp"))
    from dpinstruct.io.errors import InputError

    with pytest.raises(InputError, match="pool_assignments.parquet, field 'id'"):
        run()
    assert not resample.RELEASE.exists()
