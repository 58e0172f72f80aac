"""Algorithm 2 end to end on real shipped data with the real embedder: embed -> cluster ->
histogram -> resample -> account, with a stand-in pool (shipped public FLAN instructions; the
stages accept any instruction table) so that the test does not need a trained generator."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa

from stages import account, cluster, embed, histogram, ledger, prepare, resample, train_generator
from stages import privacy_accounting as acct
from stages.artifacts import Outputs, read_metadata, table_metadata, write_parquet


def step(fn, *args):
    with Outputs() as out:
        return fn(*args, out)


def test_release_from_real_data(project, embedder_dir):
    os.symlink(embedder_dir, "data/models/embedder")
    p = project.params
    p["prepare"].update(train_size=200, val_size=20, test_size=20, public_size=300)
    p["cluster"].update(k=6, niter=20, nredo=1)
    p["privacy"].update(epsilon=6.0, delta=1e-3)
    project.save()
    step(prepare.prepare, p)
    public = pa.Table.from_pandas(pd.read_parquet("data/prepared/public.parquet")[["id", "instruction"]])
    Path("data/generated").mkdir(parents=True)
    write_parquet(public, "data/generated/pool.parquet", public.schema, table_metadata("stand-in", "x", "dp"))
    for name in ("pool", "train"):
        step(lambda params, out, n=name: embed.embed(n, params, out), p)
    step(cluster.cluster, p)
    plan = train_generator.plan(p, 200)  # the generator's ledger entry as the stage would write it
    entry = ledger.make_entry(stage="train_generator", mechanism="poisson_subsampled_gaussian",
                              noise_multiplier=plan.noise_multiplier, sampling_rate=plan.sampling_rate, steps=plan.steps,
                              sensitivity=plan.clip_norm, delta=plan.delta,
                              event=acct.dp_sgd_event(plan.noise_multiplier, plan.sampling_rate, plan.steps))
    Path("metrics/privacy").mkdir(parents=True, exist_ok=True)
    Path(ledger.entry_path("train_generator")).write_text(json.dumps(entry))
    step(histogram.histogram, p)
    metrics = step(resample.resample, p)
    result = step(account.account, p)

    release = pd.read_parquet(resample.RELEASE)
    assert 0 < len(release) <= 300 and release.id.is_unique
    assert set(release.id) <= set(public.column("id").to_pylist())
    assert read_metadata(resample.RELEASE)["privacy"] == "dp"
    assert metrics["released"] == len(release) and metrics["clusters"] == 6
    # The plan calibrated the generator for the composed budget: account confirms it.
    assert result["epsilon"] <= 6.0 + account.TOLERANCE and abs(result["epsilon"] - plan.composed_epsilon) < 0.02
    assert read_metadata("data/embeddings/train.parquet")["privacy"] == "private"
    for report in ("cluster/pool_assignments", "histogram/noisy_histogram", "resample/instructions"):
        assert json.loads(Path(f"metrics/quality/{report}.json").read_text())["success"]
