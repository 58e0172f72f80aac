"""Benchmark of annotation (issue: alignment): local tokens/s against stock `generate`, and an
OpenAI-compatible endpoint's requests/s at concurrency 1 and 8.

Run from the repository root after `dvc repro prepare` (needs data/models and data/prepared):
    .venv/bin/python -m tests.benchmarks.bench_annotate [--n 64] [--latency 0.05]
(1) Local: the same `n` real test instructions, chat template applied, greedy, `annotate.max_new_tokens`,
    batches of `annotate.local.batch_size`: stock transformers `generate` (left-padded batch) against
    the annotator's sampler (`sampler.sample` on a batch of prompts); new tokens counted up to each row's EOS.
(2) Endpoint: the real `openai` client (OpenAIChatBackend, fresh cache) sends `n` requests to the
    test server on 127.0.0.1 that answers each after `latency` seconds (a stand-in for a model
    server's time per request), at concurrency 1 and 8.
Prints one JSON.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from dpinstruct.alignment.backends import OpenAIChatBackend, Request
from dpinstruct.alignment.chat import chat_ids, user
from dpinstruct.io import params as P
from dpinstruct.models import sampler
from dpinstruct.models.loading import GENERATOR_DIR, load_generator
from tests.alignment.openai_server import FakeOpenAI, Reply, answer_for


def useful(rows: list[list[int]], eos: int) -> int:
    return sum(r.index(eos) + 1 if eos in r else len(r) for r in rows)


def local(n: int, cfg: dict) -> dict:
    model, tokenizer = load_generator(GENERATOR_DIR)
    texts = pd.read_parquet("data/prepared/test.parquet").instruction.head(n).tolist()
    prompts = [chat_ids(tokenizer, user(t), generation_prompt=True) for t in texts]
    eos, batch, new = tokenizer.eos_token_id, int(cfg["local"]["batch_size"]), int(cfg["max_new_tokens"])
    results = {}
    for name in ("stock", "ours"):
        tokens, start = 0, time.perf_counter()
        for i in range(0, n, batch):
            part = prompts[i:i + batch]
            if name == "ours":
                rows = sampler.sample(model, part, eos_id=eos, pad_id=eos, max_new_tokens=new, top_p=1.0,
                                      temperature=0.0, generator=torch.Generator())
            else:
                width = max(len(p) for p in part)
                ids = torch.tensor([[eos] * (width - len(p)) + p for p in part])
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in part])
                out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new, eos_token_id=eos,
                                     pad_token_id=eos)
                rows = out[:, width:].tolist()
            tokens += useful(rows, eos)
        seconds = time.perf_counter() - start
        results[name] = {"tokens": tokens, "seconds": round(seconds, 1), "tokens_per_s": round(tokens / seconds, 1)}
    results["ratio"] = round(results["ours"]["tokens_per_s"] / results["stock"]["tokens_per_s"], 2)
    return results


def endpoint(n: int, latency: float) -> dict:
    requests = [Request(f"r{i}", user(f"benchmark instruction {i}")) for i in range(n)]
    results = {}
    with FakeOpenAI(lambda k, body: Reply(content=answer_for(body), delay=latency)) as server:
        for concurrency in (1, 8):
            with tempfile.TemporaryDirectory() as scratch:
                backend = OpenAIChatBackend(base_url=server.url, model="m", api_key_env=None, concurrency=concurrency,
                                            timeout=30, max_retries=0, cache_path=Path(scratch) / "c.sqlite",
                                            decoding={"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 64})
                start = time.perf_counter()
                backend.complete(requests, label=f"concurrency {concurrency}")
                seconds = time.perf_counter() - start
            results[f"concurrency_{concurrency}"] = {"requests": n, "seconds": round(seconds, 2),
                                                     "requests_per_s": round(n / seconds, 1)}
    return {"server_latency_s": latency, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.05)
    args = parser.parse_args()
    cfg = P.load()["annotate"]
    print(json.dumps({"local": local(args.n, cfg), "endpoint": endpoint(args.n, args.latency)}, indent=2))


if __name__ == "__main__":
    main()
