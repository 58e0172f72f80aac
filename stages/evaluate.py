"""Stage `evaluate`: how close each instruction set is to the real held-out TEST split.

Sets (``SETS``): ``train`` (real: the non-private reference, the best a generator could reach),
``public`` (FLAN: out-of-domain baseline), ``base`` (the generator without fine-tuning: what DP
fine-tuning is measured against), ``pool`` (DP synthetic pool, unfiltered) and ``release`` (DP,
after Algorithm 2). For each:
  * MAUVE against test (dpinstruct/embeddings/mauve_score.py, on the precomputed embeddings): ``repeats`` draws of
    exactly ``sample_size`` rows from the set and from test, a fixed number of buckets, mean, std
    and a t-interval over the draws, so that sets and experiments of different sizes are compared
    on equal terms. Every set meets the same test rows at draw r (one reference stream), so the
    differences that matter (``DIFFERENCES``: release - pool, pool - base, ...) get paired
    intervals from the per-draw differences, which also holds across experiments of a sweep;
  * pool yield (kept / sampled) of the DP and the base pool, with Wilson intervals;
  * length in words and distinct-1/2/3, the latter on samples of one common size;
  * the share of each cluster of Algorithm 2 (pool buckets) next to test's: clusters covered and
    total variation distance to test.
Plot data: plots/eval/cluster_shares.csv (with the DP histogram's shares, the release's target)
and plots/eval/lengths.csv.

Privacy class: private. These numbers are computed on the private test and train splits without
noise: they are for the data owner and never part of a release.
"""
from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from dpinstruct.embeddings import bucketing, mauve_score
from dpinstruct.evaluation.intervals import draws_interval, excludes_zero, wilson
from dpinstruct.evaluation.sets import load, sample, shares
from dpinstruct.io import params as P
from dpinstruct.io.artifacts import read_metadata, read_table
from dpinstruct.io.errors import InputError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.evaluation import Evaluate
from dpinstruct.text.stats import distinct_n, length_shares, length_summary, words

log = logging.getLogger("stages.evaluate")
STAGE = "evaluate"
REFERENCE = ("data/prepared/test.parquet", "data/embeddings/test.parquet")
SETS = {"train": ("data/prepared/train.parquet", "data/embeddings/train.parquet"),
        "public": ("data/prepared/public.parquet", "data/embeddings/public.parquet"),
        "base": ("data/generated/base_pool.parquet", "data/embeddings/base.parquet"),
        "pool": ("data/generated/pool.parquet", "data/embeddings/pool.parquet"),
        "release": ("data/release/instructions.parquet", "data/embeddings/pool.parquet")}  # release is a subset of the pool
BUCKETS = "data/clusters/buckets.parquet"
NOISY = "data/histogram/noisy_histogram.parquet"
# (a, b): a - b with a paired interval. What Algorithm 2 adds, what DP fine-tuning buys, the gap to real data.
DIFFERENCES = (("release", "pool"), ("pool", "base"), ("release", "base"), ("train", "release"))
YIELD = {"pool": "metrics/generate.json", "base": "metrics/generate_base.json"}
METRICS = "metrics/eval.json"
CLUSTER_PLOT = "plots/eval/cluster_shares.csv"
LENGTH_PLOT = "plots/eval/lengths.csv"
MAUVE_PLOT = "plots/eval/mauve.csv"


def evaluate(params: dict, out) -> dict:
    cfg = Evaluate.from_params(params)
    seed, size = cfg.seed, cfg.sample_size
    paths = {"test": REFERENCE, **SETS}
    embedders = {name: read_metadata(emb).get("embedder") for name, (_, emb) in paths.items()}
    if len(set(embedders.values())) != 1:
        raise InputError(SETS["pool"][1], f"embeddings come from different embedders: {embedders}; re-run embed")
    data = {name: load(*p) for name, p in paths.items()}
    confidence = cfg.confidence
    result = {"reference": {"set": "test", "rows": len(data["test"][0]), "mauve_sample": size},
              "confidence": confidence, "mauve": {}, "differences": {}, "yield": {}, "length_words": {},
              "distinct": {}, "clusters": {}}
    for name in tqdm(SETS, desc="MAUVE vs test", unit="set"):
        score = mauve_score.resampled(data[name][1], data["test"][1], size=size, repeats=cfg.repeats,
                                      seed=zlib.crc32(f"{seed}:{name}".encode()), buckets=cfg.num_buckets,
                                      explained_variance=cfg.explained_variance, niter=cfg.niter,
                                      nredo=cfg.nredo, reference_seed=zlib.crc32(f"{seed}:test".encode()))
        interval = draws_interval(score["per_draw"], confidence)
        result["mauve"][name] = score | {"lo": interval["lo"], "hi": interval["hi"]}
        log.info("MAUVE %s vs test: %.3f (std %.3f over %d draws of %d vs %d rows, %d buckets)%s", name, score["mauve"],
                 score["mauve_std"], len(score["per_draw"]), score["n_p"], score["n_q"], score["num_buckets"],
                 " UNDERSIZED: not comparable with full-size scores" if score["undersized"] else "")

    for a, b in DIFFERENCES:
        interval = draws_interval(np.subtract(result["mauve"][a]["per_draw"], result["mauve"][b]["per_draw"]),
                                  confidence)
        result["differences"][f"{a}-{b}"] = interval | {"significant": excludes_zero(interval)}
    for name, path in YIELD.items():
        counts = json.loads(Path(path).read_text())
        result["yield"][name] = wilson(counts["kept"], counts["sampled"], confidence) | {
            "kept": counts["kept"], "sampled": counts["sampled"]}

    common = min(size, *(len(texts) for texts, _ in data.values()))  # distinct-n falls with size: compare equals
    lengths = {}
    for name, (texts, _) in data.items():
        lengths[name] = np.array([len(words(t)) for t in texts])
        result["length_words"][name] = length_summary(lengths[name])
        picked = [texts[i] for i in sample(len(texts), common, seed, name)]
        result["distinct"][name] = {f"distinct_{n}": distinct_n(picked, n) for n in (1, 2, 3)}
    result["distinct_sample"] = common

    buckets = bucketing.from_table(read_table(BUCKETS), {})
    k = len(buckets.centroids)
    noisy = pd.read_parquet(NOISY).sort_values("cluster").noisy_count.to_numpy()
    cluster_shares = {name: shares(buckets.assign(vectors), k) for name, (_, vectors) in data.items()}
    cluster_shares["dp_histogram"] = noisy / noisy.sum() if noisy.sum() > 0 else np.full(k, 1 / k)
    for name, s in cluster_shares.items():
        result["clusters"][name] = {"covered": int((s > 0).sum()), "k": k,
                                    "tv_to_test": float(0.5 * np.abs(s - cluster_shares["test"]).sum())}

    plot_sets = ["test", "pool", "release", "dp_histogram"]
    out.write_csv(pd.DataFrame({"cluster": np.arange(k), **{n: cluster_shares[n].round(6) for n in plot_sets}}), CLUSTER_PLOT)
    out.write_csv(pd.DataFrame([{"set": name, "mauve": round(m["mauve"], 6), "lo": round(m["lo"], 6),
                                 "hi": round(m["hi"], 6)} for name, m in result["mauve"].items()]), MAUVE_PLOT)
    width, top = cfg.length_bin_words, cfg.length_max_words
    out.write_csv(pd.DataFrame({"words": np.arange(0, top + 1, width),
                                **{n: length_shares(v, width, top).round(6) for n, v in lengths.items()}}), LENGTH_PLOT)
    out.write_json(result, METRICS)
    return result


def main() -> None:
    with run_stage(STAGE) as out:
        evaluate(P.load(), out)


if __name__ == "__main__":
    main()
