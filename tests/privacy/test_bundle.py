"""The release bundle: only dp and public artifacts, up to date with dvc.lock, private hashes withheld.

A small DVC project stands in for the pipeline (the same privacy metadata and the same lineage
rules), its outputs recorded in dvc.lock with `dvc commit`, so that every refusal is checked
against real DVC state."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from dpinstruct import cli
from dpinstruct.io.artifacts import table_metadata, write_parquet
from dpinstruct.privacy import bundle

DVC_YAML = {"stages": {
    "prepare": {"cmd": "true", "deps": ["data/raw/private.jsonl"], "outs": ["data/prepared/train.parquet"],
                "metrics": [{"metrics/prepare.json": {"cache": False}}], "meta": {"privacy": "private"}},
    "release": {"cmd": "true", "deps": ["data/prepared/train.parquet"],
                "outs": ["data/release/instructions.parquet", {"metrics/privacy/release.json": {"cache": False}},
                         "dvclive/release"],
                "meta": {"privacy": "dp", "dp_mechanism": "gaussian", "dp_inputs": ["data/prepared/train.parquet"],
                         "dp_outputs": ["data/release/instructions.parquet", "metrics/privacy/release.json"]}},
    "account": {"cmd": "true", "deps": ["metrics/privacy/release.json"],
                "metrics": [{"metrics/privacy.json": {"cache": False}}], "meta": {"privacy": "dp"}},
}}
ENTRY = {"stage": "release", "mechanism": "gaussian", "noise_multiplier": 10.0, "sampling_rate": 1.0, "steps": 1,
         "sensitivity": 1.0, "epsilon": 0.34, "delta": 1e-5}


def table(path, privacy, rows=3):
    t = pa.table({"id": [f"r{i}" for i in range(rows)], "instruction": [f"text {i}" for i in range(rows)]})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_parquet(t, path, t.schema, table_metadata("x", "h", privacy))


def dvc(root, *args):
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def pipeline(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump({"data": {"private_path": "data/raw/private.jsonl"}}))
    dvc(root, "init", "--no-scm")
    (root / "data/raw").mkdir(parents=True)
    (root / "data/raw/private.jsonl").write_text('{"instruction": "PRIVATE-CANARY-7f3a"}\n')
    table(root / "data/prepared/train.parquet", "private")
    (root / "metrics/privacy").mkdir(parents=True)
    (root / "metrics/prepare.json").write_text('{"train": 1}\n')
    table(root / "data/release/instructions.parquet", "dp", rows=2)
    (root / "metrics/privacy/release.json").write_text(json.dumps(ENTRY))
    (root / "dvclive/release").mkdir(parents=True)
    (root / "dvclive/release/loss.tsv").write_text("step\tloss\n0\t1.5\n")
    (root / "metrics/privacy.json").write_text(json.dumps({
        "epsilon": 0.34, "delta": 1e-5, "accountant": "dp_accounting PLD", "epsilon_prv": 0.35,
        "neighbouring": "add_or_remove_one", "stages": {"release": ENTRY}}))
    dvc(root, "commit", "-f")
    return root


def test_bundle_holds_the_release_and_its_privacy_record(pipeline, tmp_path):
    out = tmp_path / "bundle"
    manifest = bundle.export(pipeline, out)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["DATASET_CARD.md", "MANIFEST.json", "instructions.parquet", "ledger/release.json",
                     "lineage.md", "privacy.json"]
    assert set(manifest["files"]) == set(files) - {"MANIFEST.json"}
    assert {v["privacy"] for v in manifest["files"].values()} == {"dp"}
    card = (out / "DATASET_CARD.md").read_text()
    assert "(epsilon, delta) = (0.3400, 1e-05)" in card and "2 instructions" in card
    lock = yaml.safe_load((pipeline / "dvc.lock").read_text())["stages"]
    private_md5 = lock["prepare"]["outs"][0]["md5"]
    lineage_md = (out / "lineage.md").read_text()
    assert private_md5 not in lineage_md and "withheld (private)" in lineage_md
    assert "PRIVATE-CANARY-7f3a" not in "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file())


@pytest.mark.parametrize("extra, message", [
    ("data/prepared/train.parquet", "is class 'private' (stage prepare)"),
    ("dvclive/release", "is class 'private' (stage release)"),  # a mechanism's un-noised curves
    ("metrics/prepare.json", "is class 'private'"),
    ("data/raw/private.jsonl", "is not an output of any stage"),
])
def test_anything_private_is_refused_and_nothing_written(pipeline, tmp_path, extra, message):
    out = tmp_path / "bundle"
    with pytest.raises(bundle.ExportError, match=re.escape(message)):
        bundle.export(pipeline, out, include=[extra])
    assert not out.exists() and not list(tmp_path.glob(".export-*"))


def test_a_release_not_matching_dvc_lock_is_refused(pipeline, tmp_path):
    table(pipeline / "data/release/instructions.parquet", "dp", rows=5)  # edited after the run
    with pytest.raises(bundle.ExportError, match="stage release is not up to date with dvc.lock"):
        bundle.export(pipeline, tmp_path / "bundle")


def test_a_failing_lineage_check_is_refused(pipeline, tmp_path):
    spec = yaml.safe_load((pipeline / "dvc.yaml").read_text())
    spec["stages"]["account"]["deps"].append("data/prepared/train.parquet")
    (pipeline / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(bundle.ExportError, match="lineage check failed"):
        bundle.export(pipeline, tmp_path / "bundle")


def test_command_line_refuses_with_exit_code_2(pipeline, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert cli.main(["export", "--root", str(pipeline), "--out", str(out)]) == 0
    assert cli.main(["export", "--root", str(pipeline), "--out", str(out)]) == 2  # exists: needs --force
    assert "exists and is not empty" in capsys.readouterr().err
    assert cli.main(["export", "--root", str(pipeline), "--out", str(out), "--force"]) == 0


def test_a_release_whose_memorisation_gate_did_not_pass_is_refused(pipeline, tmp_path):
    spec = yaml.safe_load((pipeline / "dvc.yaml").read_text())
    spec["stages"]["memorisation"] = {"cmd": "true", "deps": ["data/prepared/train.parquet",
                                                             "data/release/instructions.parquet"],
                                      "metrics": [{"metrics/memorisation.json": {"cache": False}}],
                                      "meta": {"privacy": "private"}}
    (pipeline / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    (pipeline / "metrics/memorisation.json").write_text('{"release": {"any": 0}}\n')
    dvc(pipeline, "commit", "-f")
    bundle.export(pipeline, tmp_path / "ok")  # the gate passed on this release
    # a new release whose gate failed: the stage raised, so dvc.lock still holds the old run
    table(pipeline / "data/release/instructions.parquet", "dp", rows=4)
    dvc(pipeline, "commit", "-f", "release")
    with pytest.raises(bundle.ExportError, match="stage memorisation is not up to date with dvc.lock"):
        bundle.export(pipeline, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists() or not any((tmp_path / "bundle").iterdir())
