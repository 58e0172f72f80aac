"""The release bundle: only dp and public artifacts, up to date with dvc.lock, private hashes withheld,
and only the mechanisms of the dataset it releases.

A small DVC project stands in for the pipeline (the same privacy metadata and the same lineage
rules), its outputs recorded in dvc.lock with `dvc commit`, so that every refusal is checked
against real DVC state. Like the pipeline it spends budgets on two private datasets: the
instructions (the release: `dp_count@instructions`, `release`) and an `imdb` set (`dp_count@imdb_sft`,
`dp_sft`, with its own budget `rl.privacy`), and one post-processing stage reads the release
(`annotate`); the shared foreach stage `dp_count` declares both budgets as params, as in dvc.yaml."""
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
from dpinstruct.tools import bundle

LEDGER = ["metrics/privacy/dp_count@instructions.json", "metrics/privacy/release.json",
          "metrics/privacy/dp_count@imdb_sft.json", "metrics/privacy/dp_sft.json"]
DVC_YAML = {"stages": {
    "prepare": {"cmd": "true", "deps": ["data/raw/private.jsonl"], "outs": ["data/prepared/train.parquet"],
                "metrics": [{"metrics/prepare.json": {"cache": False}}], "meta": {"privacy": "private"}},
    "imdb_prepare": {"cmd": "true", "deps": ["data/raw/imdb.jsonl"], "outs": ["data/rl/sft.parquet"],
                     "meta": {"privacy": "private"}},
    "dp_count": {"foreach": {"instructions": {"input": "data/prepared/train.parquet", "dataset": "instructions"},
                             "imdb_sft": {"input": "data/rl/sft.parquet", "dataset": "imdb"}},
                 "do": {"cmd": "true", "deps": ["${item.input}"], "params": ["privacy", "rl.privacy"],
                        "outs": [{"metrics/privacy/dp_count@${key}.json": {"cache": False}}],
                        "meta": {"privacy": "dp", "dp_mechanism": "gaussian_count", "dp_dataset": "${item.dataset}",
                                 "dp_inputs": ["${item.input}"],
                                 "dp_outputs": ["metrics/privacy/dp_count@${key}.json"]}}},
    "release": {"cmd": "true", "deps": ["data/prepared/train.parquet", "metrics/privacy/dp_count@instructions.json"],
                "params": ["privacy", "release"],
                "outs": ["data/release/instructions.parquet", {"metrics/privacy/release.json": {"cache": False}},
                         "dvclive/release"],
                "meta": {"privacy": "dp", "dp_mechanism": "gaussian", "dp_dataset": "instructions",
                         "dp_inputs": ["data/prepared/train.parquet"],
                         "dp_outputs": ["data/release/instructions.parquet", "metrics/privacy/release.json"]}},
    "dp_sft": {"cmd": "true", "deps": ["data/rl/sft.parquet", "metrics/privacy/dp_count@imdb_sft.json"],
               "params": ["rl.privacy", "dp_sft"],
               "outs": ["data/adapters/dp_sft.parquet", {"metrics/privacy/dp_sft.json": {"cache": False}}],
               "meta": {"privacy": "dp", "dp_mechanism": "poisson_subsampled_gaussian", "dp_dataset": "imdb",
                        "dp_inputs": ["data/rl/sft.parquet"],
                        "dp_outputs": ["data/adapters/dp_sft.parquet", "metrics/privacy/dp_sft.json"]}},
    "annotate": {"cmd": "true", "deps": ["data/release/instructions.parquet"], "params": ["annotate"],
                 "outs": ["data/annotated/release.parquet"], "meta": {"privacy": "dp"}},
    "account": {"cmd": "true", "deps": LEDGER, "params": ["privacy", "rl.privacy"],
                "metrics": [{"metrics/privacy.json": {"cache": False}}], "meta": {"privacy": "dp"}},
}}
PARAMS = {"datasets": {"instructions": {"budget": "privacy", "release": True}, "imdb": {"budget": "rl.privacy"}},
          "data": {"private_path": "data/raw/private.jsonl"}, "privacy": {"epsilon": 0.5, "delta": 1e-5},
          "release": {"sigma": 10.0}, "annotate": {"temperature": 0.7},
          "rl": {"data": {"private_path": "data/raw/imdb.jsonl"}, "privacy": {"epsilon": 8.25, "delta": 1e-5}},
          "dp_sft": {"lr": 0.000731, "clip_norm": 0.0613}}
SUMMARY = ("dataset", "partition", "mechanism", "noise_multiplier", "sampling_rate", "steps", "sensitivity",
           "epsilon", "epsilon_prv")  # what `account` keeps of each entry under `stages`
COUNT = {"stage": "dp_count@instructions", "mechanism": "gaussian_count", "dataset": "instructions",
         "partition": "all", "noise_multiplier": 20.0, "sampling_rate": 1.0, "steps": 1, "sensitivity": 1.0,
         "epsilon": 0.16, "epsilon_prv": 0.17, "delta": 1e-5, "noisy_count": 3.5}
ENTRY = {"stage": "release", "mechanism": "gaussian", "dataset": "instructions", "partition": "all",
         "noise_multiplier": 10.0, "sampling_rate": 1.0, "steps": 1, "sensitivity": 1.0, "epsilon": 0.34,
         "epsilon_prv": 0.35, "delta": 1e-5}
# the other dataset's entries: every number in them is distinctive, so that none can hide in a bundle
OTHER = {"dp_count@imdb_sft": {"stage": "dp_count@imdb_sft", "mechanism": "gaussian_count", "dataset": "imdb",
                               "partition": "sft", "noise_multiplier": 31.7, "sampling_rate": 1.0, "steps": 1,
                               "sensitivity": 1.0, "epsilon": 0.0917, "epsilon_prv": 0.0923, "delta": 1e-5,
                               "noisy_count": 4321.77},
         "dp_sft": {"stage": "dp_sft", "mechanism": "poisson_subsampled_gaussian", "dataset": "imdb",
                    "partition": "sft", "noise_multiplier": 0.6137, "sampling_rate": 0.0421, "steps": 377,
                    "sensitivity": 0.0613, "epsilon": 7.98123, "epsilon_prv": 7.99456, "delta": 1e-5}}
COMPOSED = {
    "epsilon": 0.4321, "delta": 1e-5, "epsilon_prv": 0.4455, "target_epsilon": 0.5, "within_budget": True,
    "private": True, "accountant": "dp_accounting PLD", "neighbouring": "add_or_remove_one",
    "datasets": {
        "instructions": {"epsilon": 0.4321, "epsilon_prv": 0.4455, "delta": 1e-5, "private": True,
                         "accountant": "dp_accounting PLD", "budget": "privacy", "target_epsilon": 0.5,
                         "within_budget": True, "neighbouring": "add_or_remove_one",
                         "partitions": {"all": {"epsilon": 0.4321, "epsilon_prv": 0.4455,
                                                "stages": ["dp_count@instructions", "release"]}}},
        "imdb": {"epsilon": 7.98345, "epsilon_prv": 7.99567, "delta": 1e-5, "private": True,
                 "accountant": "dp_accounting PLD", "budget": "rl.privacy", "target_epsilon": 8.25,
                 "within_budget": True, "neighbouring": "add_or_remove_one",
                 "partitions": {"sft": {"epsilon": 7.98345, "epsilon_prv": 7.99567,
                                        "stages": ["dp_count@imdb_sft", "dp_sft"]}}}},
    "stages": {e["stage"]: {k: e[k] for k in SUMMARY} for e in (COUNT, ENTRY, *OTHER.values())},
}


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
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    dvc(root, "init", "--no-scm")
    (root / "data/raw").mkdir(parents=True)
    (root / "data/raw/private.jsonl").write_text('{"instruction": "PRIVATE-CANARY-7f3a"}\n')
    (root / "data/raw/imdb.jsonl").write_text('{"text": "IMDB-CANARY-91c2"}\n')
    table(root / "data/prepared/train.parquet", "private")
    table(root / "data/rl/sft.parquet", "private")
    (root / "metrics/privacy").mkdir(parents=True)
    (root / "metrics/prepare.json").write_text('{"train": 1}\n')
    table(root / "data/release/instructions.parquet", "dp", rows=2)
    table(root / "data/adapters/dp_sft.parquet", "dp")
    table(root / "data/annotated/release.parquet", "dp", rows=2)
    for entry in (COUNT, ENTRY, *OTHER.values()):
        (root / f"metrics/privacy/{entry['stage']}.json").write_text(json.dumps(entry))
    (root / "dvclive/release").mkdir(parents=True)
    (root / "dvclive/release/loss.tsv").write_text("step\tloss\n0\t1.5\n")
    (root / "metrics/privacy.json").write_text(json.dumps(COMPOSED))
    dvc(root, "commit", "-f")
    return root


def test_bundle_holds_the_release_and_its_privacy_record(pipeline, tmp_path):
    out = tmp_path / "bundle"
    manifest = bundle.export(pipeline, out)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["DATASET_CARD.md", "MANIFEST.json", "instructions.parquet", "ledger/dp_count@instructions.json",
                     "ledger/release.json", "lineage.md", "privacy.json"]
    assert set(manifest["files"]) == set(files) - {"MANIFEST.json"}
    assert {v["privacy"] for v in manifest["files"].values()} == {"dp"}
    card = (out / "DATASET_CARD.md").read_text()
    assert "(epsilon, delta) = (0.4321, 1e-05)" in card and "2 instructions" in card
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
    # dp, but under the other dataset's guarantee, which the bundle does not carry
    ("data/adapters/dp_sft.parquet", ("descends from DP mechanisms not of dataset 'instructions' "
                                      "(dp_count@imdb_sft, dp_sft)")),
    ("metrics/privacy/dp_count@imdb_sft.json", ("descends from DP mechanisms not of dataset 'instructions' "
                                                "(dp_count@imdb_sft)")),
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


def make_non_private(root, private_key=True):
    """Turn the fake run into a `privacy.epsilon: .inf` baseline, recorded as `account` records it."""
    (root / "metrics/privacy/release.json").write_text(json.dumps({**ENTRY, "noise_multiplier": 0.0,
                                                                   "epsilon": "inf"}))
    composed = json.loads((root / "metrics/privacy.json").read_text())
    composed.update(epsilon="inf", epsilon_prv="inf", target_epsilon="inf")
    composed["datasets"]["instructions"].update(epsilon="inf", epsilon_prv="inf", target_epsilon="inf")
    composed["stages"]["release"].update(noise_multiplier=0.0, epsilon="inf")
    if private_key:
        composed["private"] = False
        composed["datasets"]["instructions"]["private"] = False
    (root / "metrics/privacy.json").write_text(json.dumps(composed))
    dvc(root, "commit", "-f")


DP_CLAIMS = ("released under differential privacy", "(epsilon, delta) =", "trained with DP", "selected with a DP",
             "DP randomness came from")


@pytest.mark.parametrize("private_key", [True, False], ids=["private-false", "epsilon-inf-only"])
def test_a_non_private_release_is_refused_without_the_flag(pipeline, tmp_path, capsys, private_key):
    make_non_private(pipeline, private_key)
    out = tmp_path / "bundle"
    with pytest.raises(bundle.ExportError, match="says this release is NOT differentially private.*--non-private"):
        bundle.export(pipeline, out)
    assert not out.exists() and not list(tmp_path.glob(".export-*"))
    assert cli.main(["export", "--root", str(pipeline), "--out", str(out)]) == 2
    assert "NOT differentially private" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".export-*"))


def test_the_non_private_flag_labels_the_bundle_not_private(pipeline, tmp_path, capsys):
    make_non_private(pipeline)
    out = tmp_path / "bundle"
    assert cli.main(["export", "--root", str(pipeline), "--out", str(out), "--non-private"]) == 0
    assert "labelled NOT differentially private" in capsys.readouterr().out
    card = (out / "DATASET_CARD.md").read_text()
    assert "**This set is NOT differentially private. It carries no privacy guarantee.**" in card
    assert "2 instructions" in card
    assert (out / "lineage.md").read_text().startswith("> **NOT differentially private.**")
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["differentially_private"] is False
    assert {v["privacy"] for v in manifest["files"].values()} == {"none (NOT differentially private)"}
    text = "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.suffix in (".md", ".json"))
    assert not [claim for claim in DP_CLAIMS if claim in text]


def test_a_private_release_keeps_its_dp_card_and_refuses_the_non_private_flag(pipeline, tmp_path):
    manifest = bundle.export(pipeline, tmp_path / "ok")
    assert manifest["differentially_private"] is True
    assert "released under differential privacy" in (tmp_path / "ok" / "DATASET_CARD.md").read_text()
    with pytest.raises(bundle.ExportError, match="--non-private was given but .* states a DP guarantee"):
        bundle.export(pipeline, tmp_path / "bundle", non_private=True)
    assert not (tmp_path / "bundle").exists()


def test_is_private_reads_the_ledger_fail_safe():
    assert bundle.is_private({"private": True, "epsilon": 5.98})
    assert bundle.is_private({"epsilon": 0.34})  # older ledgers without the flag
    assert not bundle.is_private({"private": False, "epsilon": 3.0})
    assert not bundle.is_private({"private": True, "epsilon": "inf"})
    assert not bundle.is_private({"epsilon": float("inf")})
    assert not bundle.is_private({"private": True})  # no epsilon: no guarantee stated
    assert not bundle.is_private({"epsilon": "n/a"})


def bundle_texts(out: Path) -> dict[str, str]:
    """Every file of a bundle, keyed by its path: the path itself, then its bytes read as text (a
    Parquet file too: its strings and metadata are plain bytes)."""
    return {p.relative_to(out).as_posix(): p.relative_to(out).as_posix() + "\n" + p.read_bytes().decode("latin-1")
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_the_bundle_carries_only_the_release_datasets_mechanisms(pipeline, tmp_path):
    out = tmp_path / "bundle"
    manifest = bundle.export(pipeline, out)
    texts = bundle_texts(out)
    # nothing of the other dataset: its stages, its budget's params section, the stage reading the release
    names = ["imdb", "dp_sft", "annotate", "rl.privacy", "IMDB-CANARY"]
    # nor any number of its entries, its composed guarantee or its params that the release's entries lack
    ours = {repr(v) for e in (COUNT, ENTRY) for v in e.values() if isinstance(v, float)}
    numbers = {repr(v) for e in OTHER.values() for v in e.values() if isinstance(v, float)} - ours
    numbers |= {"7.98345", "7.99567", "8.25", "0.000731", "0.0613"}
    assert {"31.7", "0.6137", "0.0421", "7.98123", "4321.77"} <= numbers
    found = {(f, x) for f, text in texts.items() for x in names + sorted(numbers) if x in text}
    assert not found, f"another dataset's mechanisms leak into the bundle: {sorted(found)}"

    # ... while every entry of the released dataset is there, byte for byte
    ledger = {f for f in texts if f.startswith("ledger/")}
    assert ledger == {"ledger/dp_count@instructions.json", "ledger/release.json"}
    for f in ledger:
        assert (out / f).read_bytes() == (pipeline / "metrics/privacy" / Path(f).name).read_bytes()
    privacy = json.loads((out / "privacy.json").read_text())
    assert privacy == {**{k: v for k, v in COMPOSED.items() if k not in ("datasets", "stages")},
                       "datasets": {"instructions": COMPOSED["datasets"]["instructions"]},
                       "stages": {s: COMPOSED["stages"][s] for s in ("dp_count@instructions", "release")}}
    from dpinstruct.io.artifacts import file_digest
    assert {f: v["sha256"] for f, v in manifest["files"].items()} == {
        f: file_digest(out / f) for f in texts if f != "MANIFEST.json"}  # of what is in the bundle
    assert manifest["files"]["privacy.json"]["source"] == "metrics/privacy.json"

    card = (out / "DATASET_CARD.md").read_text()
    assert re.findall(r"^\| (\S+ \(\S+\)) \|", card, re.MULTILINE)[1:] == ["gaussian_count (dp_count@instructions)",
                                                               "gaussian (release)"]
    assert "| gaussian_count (dp_count@instructions) | 20.0 | 1.0 | 1 | 1.0 | 0.16 |" in card
    assert "| gaussian (release) | 10.0 | 1.0 | 1 | 1.0 | 0.34 |" in card
    params = dict(re.findall(r"^- \*\*(\S+)\*\*: `(.*)`$", card, re.MULTILINE))
    assert set(params) == {"dp_count@instructions", "release"}
    assert json.loads(params["dp_count@instructions"]) == {"privacy": {"delta": 1e-05, "epsilon": 0.5}}
    assert json.loads(params["release"]) == {"privacy": {"delta": 1e-05, "epsilon": 0.5},
                                             "release": {"sigma": 10.0}}

    # lineage.md: the release's ancestors in the DAG, nothing downstream or beside it
    lineage_md = (out / "lineage.md").read_text()
    assert re.findall(r"^\| `([^`]+)` \|", lineage_md, re.MULTILINE) == [
        "data/prepared/train.parquet", "metrics/privacy/dp_count@instructions.json",
        "data/release/instructions.parquet"]
    assert re.findall(r"^- \*\*(\S+)\*\*", lineage_md, re.MULTILINE) == ["prepare", "dp_count@instructions", "release"]


def test_the_lineage_command_still_reports_every_dataset(pipeline, tmp_path):
    report = tmp_path / "lineage.md"
    assert cli.main(["lineage", "--root", str(pipeline), "--report", str(report)]) == 0
    text = report.read_text()
    for stage in ("dp_count@imdb_sft", "dp_sft", "annotate", "account", "imdb_prepare"):
        assert f"- **{stage}**" in text
    assert '"rl.privacy": {"delta": 1e-05, "epsilon": 8.25}' in text
    assert "| `data/adapters/dp_sft.parquet` | dp_sft | dp |" in text


def test_a_ledger_entry_naming_no_dataset_is_refused(pipeline, tmp_path):
    (pipeline / "metrics/privacy/dp_sft.json").write_text(json.dumps({k: v for k, v in OTHER["dp_sft"].items()
                                                                      if k != "dataset"}))
    with pytest.raises(bundle.ExportError, match=re.escape("metrics/privacy/dp_sft.json names no dataset")):
        bundle.export(pipeline, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists() and not list(tmp_path.glob(".export-*"))


def test_drop_params_removes_a_section_also_nested():
    values = {"privacy": {"epsilon": 6.0}, "rl.privacy": {"epsilon": 4.0}, "rl.privacy.delta": 1e-5,
              "rl": {"data": {"x": 1}, "privacy": {"epsilon": 4.0}}, "rlhf": {"privacy": 1}}
    assert bundle.drop_params(values, {"rl.privacy"}) == {"privacy": {"epsilon": 6.0}, "rl": {"data": {"x": 1}},
                                                          "rlhf": {"privacy": 1}}
    assert values["rl"] == {"data": {"x": 1}, "privacy": {"epsilon": 4.0}}  # not edited in place
    assert bundle.drop_params(values, set()) == values


def test_the_release_dataset_is_the_one_params_marks_not_a_constant(tmp_path):
    from dpinstruct.io.errors import PrivacyConfigError
    from dpinstruct.tools.bundle import release_dataset

    marked = {"datasets": {"instructions": {"budget": "privacy"}, "imdb": {"budget": "rl.privacy", "release": True}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(marked))
    assert release_dataset(tmp_path) == "imdb"
    marked["datasets"]["instructions"]["release"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(marked))
    with pytest.raises(PrivacyConfigError, match=r"exactly one dataset must be marked release: true, got \[('imdb', 'instructions'|'instructions', 'imdb')\]"):
        release_dataset(tmp_path)
