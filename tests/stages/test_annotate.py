"""The annotate stage: local annotation on the real student (resumable, deterministic), remote
annotation through the real openai client against a server on 127.0.0.1, and the privacy guard."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import yaml

from dpinstruct.io.artifacts import Outputs, read_metadata, table_metadata, write_parquet
from dpinstruct.io.errors import PipelineError, PrivacyConfigError
from dpinstruct.models import sampler
from stages import annotate
from tests.alignment.openai_server import FakeOpenAI, Reply, answer_for, ok

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["What is 2+2?", "Name a colour.", "Say hello in French.", "What is the capital of Italy?",
         "Give me one word that rhymes with cat.", "Is water wet?", "Count to three.", "What day follows Monday?"]


@pytest.fixture
def project(tmp_path, monkeypatch, generator_dir, repo_params):
    monkeypatch.chdir(tmp_path)
    Path("data/models").mkdir(parents=True)
    os.symlink(generator_dir, "data/models/generator")
    for name, privacy in (("train", "private"), ("release", "dp")):
        table = pa.table({"id": [f"{name}{i}" for i in range(len(TEXTS))], "instruction": TEXTS})
        path = Path(annotate.SETS[name])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet(table, path, table.schema, table_metadata("test", "x", privacy))
    params = yaml.safe_load(yaml.safe_dump(repo_params))
    params["annotate"].update(rows=6, max_new_tokens=12)
    params["annotate"]["local"].update(batch_size=4)
    return params


def run(name, params):
    with Outputs() as out:
        return annotate.annotate(name, params, out)


def test_local_annotation_keeps_the_class_and_resumes_exactly(project, monkeypatch):
    stats = run("train", project)
    table = pd.read_parquet(annotate.output("train"))
    assert list(table.columns) == annotate.SCHEMA.names and len(table) == stats["rows"] == 6
    assert read_metadata(annotate.output("train"))["privacy"] == "private"
    assert (table.response.str.len() > 0).all() and set(table.finish_reason) <= {"stop", "length"}
    first = annotate.output("train").read_bytes()
    # a run killed after its first chunk resumes at the second and writes the same bytes
    annotate.output("train").unlink()
    for f in Path(annotate.RESUME_DIR / "train").glob("*-00001.parquet"):
        f.unlink()
    calls = []

    real_sample = sampler.sample
    monkeypatch.setattr(sampler, "sample", lambda *a, **k: calls.append(1) or real_sample(*a, **k))
    run("train", project)
    assert len(calls) == 1 and annotate.output("train").read_bytes() == first


def test_remote_annotation_of_a_private_set_is_refused_without_the_opt_in(project):
    project["annotate"]["backend"] = "openai"
    with FakeOpenAI() as server:
        project["annotate"]["openai"].update(base_url=server.url, max_retries=0)
        with pytest.raises(PrivacyConfigError, match="set 'train' is private.*annotate.allow_remote_private"):
            run("train", project)
        assert server.requests == [] and not annotate.output("train").exists()
        project["annotate"]["allow_remote_private"] = True
        run("train", project)
        assert len(server.requests) == 6


def test_remote_annotation_of_the_dp_release(project):
    project["annotate"]["backend"] = "openai"
    with FakeOpenAI() as server:
        project["annotate"]["openai"].update(base_url=server.url)
        run("release", project)
        table = pd.read_parquet(annotate.output("release"))
        assert read_metadata(annotate.output("release"))["privacy"] == "dp"
        sent = {b["messages"][-1]["content"]: b for b in server.requests}
        assert all(b["messages"][0]["role"] == "system" for b in server.requests)  # annotate.system_prompt
        assert all(r.response == answer_for(sent[r.instruction]) for r in table.itertuples())


def test_a_failed_remote_run_leaves_no_artifact_and_resumes_with_what_is_missing(project):
    project["annotate"].update(backend="openai", allow_remote_private=True, rows=None)
    failed = []

    def fails_once_on_rome(n, body):
        if "Italy" in body["messages"][-1]["content"] and not failed:
            failed.append(n)
            return Reply(status=500)
        return ok(n, body)

    with FakeOpenAI(fails_once_on_rome) as server:
        project["annotate"]["openai"].update(base_url=server.url, max_retries=0, concurrency=1)
        with pytest.raises(PipelineError) as err:
            run("train", project)
        assert "annotate@train" in str(err.value) and "row id 'train3'" in str(err.value)
        assert "Italy" not in str(err.value) and not annotate.output("train").exists()
        before = len(server.requests)
        run("train", project)
        assert len(server.requests) - before == 8 - (before - 1)  # only what had no answer yet
        assert len(pd.read_parquet(annotate.output("train"))) == 8
