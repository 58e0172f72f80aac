"""Benchmarks, outside the default suite: `.venv/bin/python -m pytest -m benchmark -s`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_bench(module: str) -> dict:
    """Run tests/benchmarks/<module>.py from the repository root; its printed JSON, echoed."""
    out = subprocess.run([sys.executable, "-m", f"tests.benchmarks.{module}"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    results = json.loads(out[out.index("{"):])
    print(json.dumps(results, indent=2))
    return results


@pytest.mark.benchmark
def test_train_generator_speed():
    if not (REPO / "data/prepared/train.parquet").exists():
        pytest.skip("run `dvc repro prepare` first")
    fraction = os.environ.get("BENCH_EPOCH_FRACTION", "1.0")
    out = subprocess.run([sys.executable, "-m", "tests.benchmarks.bench_train_generator", "--fraction", fraction],
                         cwd=REPO, check=True, capture_output=True, text=True).stdout
    results = json.loads(out[out.index("{"):])
    print(json.dumps(results, indent=2))
    assert results["epoch_ratio"] <= 0.33, results


@pytest.mark.benchmark
def test_generate_speed():
    if not (REPO / "data/adapters/generator/adapter_model.safetensors").exists():
        pytest.skip("run `dvc repro train_generator` first")
    n = os.environ.get("BENCH_GENERATE_N", "256")
    out = subprocess.run([sys.executable, "-m", "tests.benchmarks.bench_generate", "--n", n], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    results = json.loads(out[out.index("{"):])
    print(json.dumps(results, indent=2))
    assert results["ratio_vs_stock_unmerged"] >= 3.0 and results["ratio_vs_stock_merged"] >= 3.0, results


@pytest.mark.benchmark
def test_algorithm2_at_paper_scale():
    out = subprocess.run([sys.executable, "-m", "tests.benchmarks.bench_algorithm2"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    results = json.loads(out[out.index("{"):])
    print(json.dumps(results, indent=2))
    assert results["total_seconds"] < 300, results


@pytest.mark.benchmark
def test_annotation_speed():
    if not (REPO / "data/prepared/test.parquet").exists():
        pytest.skip("run `dvc repro prepare` first")
    results = run_bench("bench_annotate")
    assert results["local"]["ratio"] >= 1.15, results  # greedy: stock generate sorts nothing; measured 1.24
    endpoint = results["endpoint"]
    assert endpoint["concurrency_8"]["requests_per_s"] >= 4 * endpoint["concurrency_1"]["requests_per_s"], results


@pytest.mark.benchmark
def test_dp_ppo_speed():
    if not (REPO / "data/adapters/dp_sft/adapter_model.safetensors").exists():
        pytest.skip("run `dvc repro dp_sft sentiment_reward` first")
    results = run_bench("bench_ppo")
    assert results["ratio"] <= 3.0 and results["rollout_tokens_per_s"] > 50, results
    assert results["old_and_reference_logprob_s"] < results["rollout_seconds"], results  # the trunk is not re-run


@pytest.mark.benchmark
def test_reward_model_backbones():
    if not (REPO / "data/rlhf/pairs.parquet").exists():
        pytest.skip("run `dvc repro hh_prepare models` first")
    results = run_bench("bench_reward_backbone")
    embedder, generator = results["embedder"], results["generator"]
    # the shipped default (embedder) must be the cheaper backbone and better than chance under DP
    assert embedder["seconds_per_1000_texts"] < generator["seconds_per_1000_texts"], results
    assert embedder["dp"]["accuracy_mean"] > 0.55, results


@pytest.mark.benchmark
def test_prepare_at_a_million_rows():
    if not (REPO / "data/models/generator").exists():
        pytest.skip("run `dvc repro models` first")
    results = run_bench("bench_prepare_scale")
    # measured 175 s and 1.72 GB on 2 cores; the bound is what "bounded memory" promises here
    assert results["peak_rss_mb"] < 3000 and results["counts"]["read"] == 1_000_000, results
