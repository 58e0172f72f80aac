"""Benchmark of `prepare` on a large private file (issue: hostile inputs and scale).

    .venv/bin/python -m tests.benchmarks.bench_prepare_scale [--rows 1000000] [--format jsonl]

Writes ``rows`` synthetic private rows to a scratch project (each a shipped Chatbot Arena prompt plus
a random tail of five words, so that most survive exact dedup and many collide on 10-grams; seven
rows per user_id), runs the real `prepare` stage on it in a child process (the shipped params, the
split sizes unchanged, train = every remaining row), and prints one JSON with the input size, the
wall time and the child's peak RSS (the bounded-memory claim), and the stage's counts.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
         "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey",
         "xray", "yankee", "zulu"]


def write_rows(path: Path, n: int, fmt: str) -> None:
    rng = random.Random(0)
    with open(REPO / "data/raw/chatbot_arena/instructions.jsonl", encoding="utf-8") as f:
        base = [json.loads(line)["instruction"] for line in f]
    records = ({"id": f"r{i}", "user_id": f"u{i // 7}",
                "instruction": f"{rng.choice(base)} ({' '.join(rng.choice(WORDS) for _ in range(4))} {i})"}
               for i in range(n))
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = list(records)
        pq.write_table(pa.Table.from_pylist(rows), path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--format", choices=("jsonl", "parquet"), default="jsonl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as tmp:
        root = Path(tmp)
        (root / "data/models").mkdir(parents=True)
        (root / "data/models/generator").symlink_to(REPO / "data/models/generator")
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        source = root / f"private.{args.format}"
        started = time.perf_counter()
        write_rows(source, args.rows, args.format)
        written = time.perf_counter() - started
        params["data"]["private_path"] = str(source)
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        started = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-m", "stages.prepare"], cwd=root, check=True, env=env)
        seconds = time.perf_counter() - started
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB on Linux
        counts = json.loads((root / "metrics/prepare.json").read_text())["private"]
        print(json.dumps({"rows": args.rows, "format": args.format, "input_mb": round(source.stat().st_size / 2**20, 1),
                          "write_input_s": round(written, 1), "prepare_s": round(seconds, 1),
                          "peak_rss_mb": round(peak), "counts": counts}, indent=2))


if __name__ == "__main__":
    main()
