"""Algorithm 2 end to end on real shipped data with the real embedder: embed -> cluster ->
histogram -> resample -> account -> evaluate, with a stand-in pool (shipped public FLAN instructions; the
stages accept any instruction table) so that the test does not need a trained generator."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dpinstruct.embeddings import embedding_io
from dpinstruct.io.artifacts import Outputs, read_metadata, table_metadata, write_parquet
from dpinstruct.io.errors import InputError
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_count, ledger
from dpinstruct.training import dp_generator
from stages import account, cluster, embed, evaluate, histogram, prepare, prepare_public, resample


def step(fn, *args):
    with Outputs() as out:
        return fn(*args, out)


def test_release_from_real_data(project, embedder_dir):
    os.symlink(embedder_dir, "data/models/embedder")
    p = project.params
    project.use_private_rows(300, test_share=0.2, val_share=0.07)  # about 200 train, 24 val, 58 test rows
    p["prepare_public"].update(size=300)
    p["evaluate"].update(sample_size=50, repeats=2, nredo=1)
    p["cluster"].update(k=6, niter=20, nredo=1)
    p["privacy"].update(epsilon=6.0, delta=1e-3)
    project.save()
    step(prepare.prepare, p)
    count = project.dp_count("instructions")  # N~ of the train split: the histogram and the plan read it
    step(prepare_public.prepare_public, p)
    public = pa.Table.from_pandas(pd.read_parquet("data/prepared/public.parquet")[["id", "instruction"]])
    Path("data/generated").mkdir(parents=True)
    write_parquet(public, "data/generated/pool.parquet", public.schema, table_metadata("stand-in", "x", "dp"))
    base = pa.Table.from_pandas(pd.read_parquet("data/prepared/train.parquet")[["id", "instruction"]].head(80))
    write_parquet(base, "data/generated/base_pool.parquet", base.schema, table_metadata("stand-in", "x", "public"))
    Path("metrics").mkdir(exist_ok=True)
    Path("metrics/generate.json").write_text(json.dumps({"kept": 300, "sampled": 400}))
    Path("metrics/generate_base.json").write_text(json.dumps({"kept": 80, "sampled": 640}))
    for name in ("pool", "base", "train", "test", "public"):
        step(lambda params, out, n=name: embed.embed(n, params, out), p)
    step(cluster.cluster, p)
    noisy_count, count_component, _ = dp_count.read("instructions")
    assert noisy_count == count["noisy_count"] and count_component == (p["dp_count"]["sigma"], 1.0, 1)
    plan = dp_generator.plan(p, noisy_count, count_component)  # the generator's ledger entry as the stage would write it
    entry = ledger.make_entry(stage="train_generator", mechanism="poisson_subsampled_gaussian", dataset="instructions",
                              partition="all",
                              sensitivity=plan.clip_norm, delta=plan.delta,
                              event=acct.dp_sgd_event(plan.noise_multiplier, plan.sampling_rate, plan.steps),
                              secure_mode=False)
    Path("metrics/privacy").mkdir(parents=True, exist_ok=True)
    Path(ledger.entry_path("train_generator")).write_text(json.dumps(entry))
    for name, part in (("dp_sft", "sft"), ("dp_ppo", "ppo")):  # the RL pipeline's entries: account wants all
        rl = ledger.make_entry(stage=name, mechanism="m", dataset="imdb", partition=part, sensitivity=1.0, delta=p["rl"]["privacy"]["delta"],
                               event=acct.dp_sgd_event(0.5, 0.005, 10), secure_mode=False)
        Path(ledger.entry_path(name)).write_text(json.dumps(rl))
    hh = ledger.make_entry(stage="dp_reward_model", mechanism="m", dataset="hh_rlhf", partition="reward",
                           sensitivity=1.0,
                           delta=p["rlhf"]["privacy"]["delta"], event=acct.dp_sgd_event(1.0, 0.05, 100),
                           secure_mode=False)
    Path(ledger.entry_path("dp_reward_model")).write_text(json.dumps(hh))
    for name, dataset, part, delta in (("imdb_sft", "imdb", "sft", p["rl"]["privacy"]["delta"]),
                                       ("imdb_ppo", "imdb", "ppo", p["rl"]["privacy"]["delta"]),
                                       ("hh_rlhf", "hh_rlhf", "reward", p["rlhf"]["privacy"]["delta"])):
        other = ledger.make_entry(stage=f"dp_count@{name}", mechanism="gaussian_count", dataset=dataset, partition=part,
                                  sensitivity=1.0, delta=delta,
                                  event=acct.histogram_event(20.0), noisy_count=1000.0, secure_mode=False)
        Path(dp_count.entry_path(name)).write_text(json.dumps(other))
    step(histogram.histogram, p)
    metrics = step(resample.resample, p)
    result = step(account.account, p)

    release = pd.read_parquet(resample.RELEASE)
    assert 0 < len(release) <= 300 and release.id.is_unique
    assert set(release.id) <= set(public.column("id").to_pylist())
    assert read_metadata(resample.RELEASE)["privacy"] == "dp"
    assert metrics["released"] == len(release) and metrics["clusters"] == 6
    # The plan calibrated the generator for the composed budget (with the histogram and the DP
    # count): account, composing the three ledger entries, confirms it.
    assert result["epsilon"] <= 6.0 and result["epsilon_prv"] <= 6.0
    assert abs(result["epsilon"] - plan.composed_epsilon) < 0.02
    assert result["datasets"]["instructions"]["partitions"]["all"]["stages"] == [
        "dp_count@instructions", "histogram", "train_generator"]
    assert read_metadata("data/embeddings/train.parquet")["privacy"] == "private"
    for report in ("cluster/pool_assignments", "histogram/noisy_histogram", "resample/instructions"):
        assert json.loads(Path(f"metrics/quality/{report}.json").read_text())["success"]

    # evaluate: every set against the real test split, with the documented keys
    scores = step(evaluate.evaluate, p)
    saved = json.loads(Path(evaluate.METRICS).read_text())
    assert saved == json.loads(json.dumps(scores))
    assert set(saved) == {"reference", "confidence", "mauve", "differences", "yield", "length_words", "distinct",
                          "distinct_sample", "clusters"}
    sets = {"train", "public", "base", "pool", "release"}
    assert set(saved["mauve"]) == sets
    assert set(saved["length_words"]) == set(saved["distinct"]) == sets | {"test"}
    assert set(saved["clusters"]) == sets | {"test", "dp_histogram"}
    for s in sets:
        assert set(saved["mauve"][s]) == {"mauve", "mauve_std", "per_draw", "num_buckets", "n_p", "n_q", "undersized",
                                          "lo", "hi"}
        assert 0 <= saved["mauve"][s]["mauve"] <= 1 and len(saved["mauve"][s]["per_draw"]) == 2
        assert saved["mauve"][s]["lo"] <= saved["mauve"][s]["mauve"] <= saved["mauve"][s]["hi"]
        assert (saved["mauve"][s]["n_p"], saved["mauve"][s]["num_buckets"]) == (50, 5)  # equal terms for every set
    assert set(saved["distinct"]["pool"]) == {"distinct_1", "distinct_2", "distinct_3"}
    assert set(saved["clusters"]["pool"]) == {"covered", "k", "tv_to_test"} and saved["clusters"]["test"]["tv_to_test"] == 0
    # real train is the same distribution as test; the stand-in pool is FLAN, out of domain
    assert saved["mauve"]["train"]["mauve"] > 0.8 > 0.3 > saved["mauve"]["pool"]["mauve"]
    # the paired differences are the mean of per-draw differences; the stand-in base (real rows) beats FLAN
    assert set(saved["differences"]) == {"release-pool", "pool-base", "release-base", "train-release"}
    pool_base = saved["differences"]["pool-base"]
    assert pool_base["mean"] == pytest.approx(np.mean(np.subtract(saved["mauve"]["pool"]["per_draw"],
                                                                  saved["mauve"]["base"]["per_draw"])))
    assert pool_base["significant"] and pool_base["lo"] <= pool_base["mean"] <= pool_base["hi"] < 0
    assert saved["yield"]["pool"]["kept"] == 300 and saved["yield"]["pool"]["mean"] == 0.75
    assert saved["yield"]["base"]["mean"] == 0.125 and saved["yield"]["base"]["hi"] < saved["yield"]["pool"]["lo"]
    assert list(pd.read_csv(evaluate.MAUVE_PLOT).set) == ["train", "public", "base", "pool", "release"]

    assert saved["reference"] == {"set": "test", "rows": len(pd.read_parquet("data/prepared/test.parquet")),
                                  "mauve_sample": 50}
    shares = pd.read_csv(evaluate.CLUSTER_PLOT)
    assert list(shares.columns) == ["cluster", "test", "pool", "release", "dp_histogram"] and len(shares) == 6
    assert shares[["test", "pool", "release", "dp_histogram"]].sum().round(3).eq(1).all()
    lengths = pd.read_csv(evaluate.LENGTH_PLOT)
    assert list(lengths.columns) == ["words", "test", "train", "public", "base", "pool", "release"]


def test_evaluate_refuses_a_release_row_without_embedding(project, embedder_dir):
    Path("data/embeddings").mkdir(parents=True)
    Path("data/release").mkdir(parents=True)
    vectors = pa.table({"id": ["a"], "instruction": ["x"]})
    write_parquet(vectors, "data/release/instructions.parquet", vectors.schema, table_metadata("resample", "x", "dp"))
    emb = embedding_io.to_table(["b"], np.ones((1, 4), dtype=np.float32))
    write_parquet(emb, "data/embeddings/pool.parquet", emb.schema, table_metadata("embed", "x", "dp"))
    with pytest.raises(InputError, match=r"data/embeddings/pool.parquet.*no embedding for 1 rows of "
                                         r"data/release/instructions.parquet \(first id 'a'\)"):
        evaluate.load("data/release/instructions.parquet", "data/embeddings/pool.parquet")
