"""The embed stage with the real shipped embedder on a few shipped instructions."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dpinstruct.embeddings import embedding_io
from dpinstruct.io.artifacts import Outputs, read_metadata, table_metadata, write_parquet
from dpinstruct.io.errors import ConfigError, InputError
from stages import embed

REPO = Path(__file__).resolve().parents[2]
PARAMS = {"embed": {"batch_size": 8, "max_seq_length": 128, "bf16": False}, "models": {"embedder": "package:x"}}


@pytest.fixture
def tables(tmp_path, monkeypatch, embedder_dir):
    monkeypatch.chdir(tmp_path)
    Path("data/models").mkdir(parents=True)
    os.symlink(embedder_dir, "data/models/embedder")
    texts = pd.read_json(REPO / "data/raw/chatbot_arena/instructions.jsonl", lines=True).instruction[:12].tolist()
    for name, privacy in (("train", "private"), ("pool", "dp")):
        table = pa.table({"id": [f"{name}{i}" for i in range(12)], "instruction": texts})
        path = Path(embed.SETS[name])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(table, path, table.schema, table_metadata("test", "x", privacy))
    return texts


def run(name):
    with Outputs() as out:
        return embed.embed(name, PARAMS, out)


def test_embeddings_keep_their_input_class_and_are_deterministic(tables, embedder_dir):
    assert run("train") == 12 and run("pool") == 12
    ids, vectors = embedding_io.read(embed.output("train"))
    assert ids == [f"train{i}" for i in range(12)] and vectors.shape == (12, 384) and vectors.dtype == np.float32
    assert read_metadata(embed.output("train"))["privacy"] == "private"
    assert read_metadata(embed.output("pool"))["privacy"] == "dp"
    assert np.array_equal(embedding_io.read(embed.output("pool"))[1], vectors)  # same texts, same vectors
    from sentence_transformers import SentenceTransformer

    direct = SentenceTransformer(str(embedder_dir), device="cpu").encode(tables[:3])
    assert np.allclose(vectors[:3], direct, atol=1e-5)
    first = hashlib.sha256(embed.output("train").read_bytes()).hexdigest()
    run("train")
    assert hashlib.sha256(embed.output("train").read_bytes()).hexdigest() == first


def test_unknown_set_and_unlabelled_input_are_refused(tables):
    with pytest.raises(ConfigError, match="unknown instruction set"):
        run("secret")
    table = pa.table({"id": ["a"], "instruction": ["hello"]})
    import pyarrow.parquet as pq

    pq.write_table(table, embed.SETS["train"])
    with pytest.raises(InputError, match="no privacy class"):
        run("train")
