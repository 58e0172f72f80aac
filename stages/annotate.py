"""Stage `annotate` (one DVC stage per instruction set, `annotate@<set>`): responses to instructions.

``python -m stages.annotate <set>`` answers a seeded sample of the set's instructions
(``annotate.rows``; the private test split: ``annotate.test_rows``) with the backend of
``annotate.backend`` (dpinstruct/alignment/backends.py: a local model on the fast sampler, or any
OpenAI-compatible endpoint) and writes data/annotated/<set>.parquet (id, instruction, response,
response_tokens, finish_reason). The output keeps its input's privacy class. A private set is
never sent to a remote backend unless ``annotate.allow_remote_private`` is true.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa

from dpinstruct.alignment.backends import BACKENDS, Request, rate
from dpinstruct.alignment.chat import user
from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import read_metadata, table_metadata
from dpinstruct.io.errors import ConfigError, InputError, PrivacyConfigError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.alignment import Annotate
from dpinstruct.models.loading import GENERATOR_DIR

log = logging.getLogger("stages.annotate")
STAGE = "annotate"
SETS = {"release": "data/release/instructions.parquet", "pool": "data/generated/pool.parquet",
        "train": "data/prepared/train.parquet", "public": "data/prepared/public.parquet",
        "test": "data/prepared/test.parquet"}
RESUME_DIR = Path("data/checkpoints/annotate")
SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("instruction", pa.string(), nullable=False),
                    pa.field("response", pa.string(), nullable=False),
                    pa.field("response_tokens", pa.int32(), nullable=False),
                    pa.field("finish_reason", pa.string(), nullable=False)])


def output(name: str) -> Path:
    return Path(f"data/annotated/{name}.parquet")


def model_path(spec: str) -> str:
    """`generator` is the materialised base generator; anything else an HF id or local folder."""
    return str(GENERATOR_DIR) if spec == "generator" else spec


def sample(df: pd.DataFrame, rows: int | None, seed: int) -> pd.DataFrame:
    """A seeded sample ranked by a hash of (id, seed): a set that grows keeps its sampled rows."""
    if rows is None or rows >= len(df):
        return df
    rank = pd.util.hash_pandas_object(df.id.astype(str) + f"#{seed}", index=False).to_numpy()
    return df.assign(_rank=rank).sort_values("_rank").head(int(rows)).drop(columns="_rank").sort_index()


def backend_for(cfg: Annotate, name: str, privacy: str):
    kind = cfg.backend
    if kind not in BACKENDS:
        raise ConfigError("annotate.backend", f"unknown backend {kind!r}; one of {sorted(BACKENDS)}")
    if BACKENDS[kind].remote and privacy == "private" and not cfg.allow_remote_private:
        raise PrivacyConfigError(f"annotate@{name}: set {name!r} is private and annotate.backend is {kind!r} (remote); "
                                 "refusing to send it. Set annotate.allow_remote_private: true only if that endpoint "
                                 "may see the private instructions")
    if kind == "local":
        return BACKENDS[kind](model_path(cfg.local.model), decoding=cfg.decoding(), batch_size=cfg.local.batch_size,
                              seed=cfg.seed, resume_dir=RESUME_DIR / name)
    remote = cfg.openai
    return BACKENDS[kind](base_url=remote.base_url, model=remote.model, api_key_env=remote.api_key_env,
                          concurrency=remote.concurrency, timeout=remote.timeout, max_retries=remote.max_retries,
                          decoding=cfg.decoding(), cache_path=RESUME_DIR / "requests.sqlite",
                          private=privacy == "private")


def annotate(name: str, params: dict, out) -> dict:
    if name not in SETS:
        raise ConfigError("stage argument", f"unknown instruction set {name!r}; one of {sorted(SETS)}")
    cfg, source = Annotate.from_params(params), SETS[name]
    privacy = read_metadata(source).get("privacy")
    if privacy is None:
        raise InputError(source, "no privacy class in the Parquet metadata (dpinstruct.privacy)")
    backend = backend_for(cfg, name, privacy)  # refuses before anything is read or sent
    df = sample(pd.read_parquet(source, columns=["id", "instruction"]),
                cfg.test_rows if name == "test" else cfg.rows, cfg.seed)
    if df.empty:
        raise InputError(source, "no instructions to annotate")
    log.info("annotating %d instructions of %s (class %s) with the %s backend", len(df), name, privacy, cfg.backend)
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    requests = [Request(r.id, system + user(r.instruction)) for r in df.itertuples()]
    answers = backend.complete(requests, label=f"annotate@{name}")
    table = df.assign(response=[a.text for a in answers], response_tokens=[a.tokens for a in answers],
                      finish_reason=[a.finish_reason for a in answers]).reset_index(drop=True)
    report = quality.check(table, f"annotate/{name}", quality.table_rules(
        columns=SCHEMA.names, non_null=SCHEMA.names, between={"response_tokens": (0, None)}))
    model = model_path(cfg.local.model) if cfg.backend == "local" else cfg.openai.model
    meta = table_metadata(STAGE, P.params_hash(cfg.raw), privacy, set=name, source=source, backend=cfg.backend,
                          annotator=model, decoding=cfg.decoding())
    out.write_parquet(pa.Table.from_pandas(table, preserve_index=False), output(name), SCHEMA, meta)
    out.write_json(report, quality.report_path(f"annotate/{name}"))
    stats = {"rows": len(table), "finished": int((table.finish_reason == "stop").sum()),
             "mean_response_tokens": float(table.response_tokens.mean()), "backend": cfg.backend}
    log.info("annotate@%s: %d rows, %d finished; %s", name, stats["rows"], stats["finished"], rate(backend.stats))
    return stats


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    with run_stage(f"{STAGE}@{name}") as out:
        annotate(name, P.load(), out)


if __name__ == "__main__":
    main()
