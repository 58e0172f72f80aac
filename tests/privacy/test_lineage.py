"""The lineage check on the real dvc.yaml and on deliberately mis-wired copies of it."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from dpinstruct import cli
from dpinstruct.io.artifacts import table_metadata, write_parquet
from dpinstruct.tools import lineage

REPO = Path(__file__).resolve().parents[2]


def test_shipped_pipeline_passes_and_classes_are_as_designed():
    problems, arts = lineage.check(REPO)
    assert problems == []
    assert arts["data/release/instructions.parquet"].privacy == "dp"
    assert arts["data/release/instructions.parquet"].mechanisms == {"dp_count@instructions", "train_generator",
                                                                    "histogram"}
    assert arts["data/generated/pool.parquet"].mechanisms == {"dp_count@instructions", "train_generator"}
    assert arts["data/embeddings/train.parquet"].privacy == "private"
    assert arts["data/prepared/public.parquet"].privacy == "public"
    # un-noised training curves stay private: only a mechanism's listed dp_outputs are dp
    assert arts["dvclive/train_generator/metrics.json"].privacy == "private"
    assert arts["data/adapters/generator"].privacy == "dp"
    assert arts["metrics/privacy/train_generator.json"].privacy == "dp"
    assert arts["metrics/eval.json"].privacy == "private"
    # issue 17: the DP reward model is dp through its own mechanism; RLHF on the release or FLAN is
    # post-processing of DP outputs, on the real split it is private
    assert arts["data/models/dp_reward_model"].privacy == "dp"
    assert arts["data/models/dp_reward_model"].mechanisms == {"dp_count@hh_rlhf", "dp_reward_model"}
    assert arts["data/models/gold_reward"].privacy == "private"
    assert arts["data/adapters/rlhf/release"].mechanisms == {"dp_count@hh_rlhf", "dp_reward_model",
                                                             "dp_count@instructions", "train_generator", "histogram"}
    assert arts["data/adapters/rlhf/flan"].privacy == "dp"
    assert arts["data/adapters/rlhf/real"].privacy == "private"


@pytest.fixture
def fixture_project(tmp_path):
    """A copy of the pipeline definition in a scratch DVC project (no data, no git)."""
    from dvc.repo import Repo

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    Repo.init(str(tmp_path), no_scm=True).close()

    def edit(fn):
        spec = yaml.safe_load((tmp_path / "dvc.yaml").read_text())
        fn(spec["stages"])
        (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        return tmp_path

    return edit


def _add_dep(stage, path):
    return lambda s: s[stage]["deps"].append(path)


MISWIRED = {
    # resampling straight from private embeddings bypasses the DP histogram
    "release_reads_private_embeddings": (_add_dep("resample", "data/embeddings/train.parquet"),
                                         "stage resample (class dp) reads data/embeddings/train.parquet (class private"),
    # the generator's pool must be post-processing of the adapter only
    "generate_reads_private_split": (_add_dep("generate", "data/prepared/train.parquet"),
                                     "stage generate (class dp) reads data/prepared/train.parquet"),
    # relabelling a private embedding as dp does not launder it: the edge into it fails
    "private_embeddings_relabelled_dp": (lambda s: s["embed"]["foreach"]["train"].update(privacy="dp"),
                                         "stage embed@train (class dp) reads data/prepared/train.parquet"),
    "public_stage_reads_private_file": (_add_dep("prepare_public", "${data.private_path}"),
                                        "stage prepare_public (class public) reads data/raw/chatbot_arena"),
    "histogram_without_mechanism": (lambda s: s["histogram"]["meta"].pop("dp_mechanism"),
                                    "stage histogram (class dp) reads data/embeddings/train.parquet"),
    "mechanism_on_a_private_stage": (lambda s: s["prepare"]["meta"].update(dp_mechanism="gaussian"),
                                     "stage prepare: declares dp_mechanism 'gaussian' but its class is 'private'"),
    "undeclared_raw_input_counts_as_private": (_add_dep("cluster", "data/raw/extra.jsonl"),
                                               "reads data/raw/extra.jsonl (class private, raw input)"),
    "annotation_of_a_private_set_relabelled_dp": (lambda s: s["annotate"]["foreach"]["train"].update(privacy="dp"),
                                                  "stage annotate@train (class dp) reads data/prepared/train.parquet"),
    "evaluation_relabelled_dp": (lambda s: s["evaluate"]["meta"].update(privacy="dp"),
                                 "stage evaluate (class dp) reads data/prepared/test.parquet"),
    "reading_a_private_output_of_a_dp_stage": (_add_dep("account", "dvclive/train_generator/metrics.json"),
                                               "reads dvclive/train_generator/metrics.json (class private"),
    "missing_class": (lambda s: s["cluster"]["meta"].pop("privacy"), "stage cluster: meta.privacy must be"),
    "dp_outputs_typo": (lambda s: s["train_generator"]["meta"].update(dp_outputs=["data/adapters/generatr"]),
                        "stage train_generator: dp_outputs entry 'data/adapters/generatr' is not one of its"),
    # issue 11, hole 1: a mechanism whose ledger entry is missing, or not composed by `account`
    "mechanism_without_ledger_entry": (
        lambda s: s["histogram"]["outs"].remove({"metrics/privacy/histogram.json": {"cache": False}}),
        "stage histogram: a dp_mechanism stage must write its ledger entry metrics/privacy/histogram.json"),
    "ledger_entry_not_composed": (
        lambda s: s["account"]["deps"].remove("metrics/privacy/histogram.json"),
        "its ledger entry metrics/privacy/histogram.json is not a dep of the stage that writes metrics/privacy.json"),
    "ledger_entry_not_a_dp_output": (
        lambda s: s["histogram"]["meta"]["dp_outputs"].remove("metrics/privacy/histogram.json"),
        "stage histogram: a dp_mechanism stage must write its ledger entry"),
    # hole 2: a mechanism stage reading a private file its mechanism does not protect
    "mechanism_reads_an_extra_private_file": (
        _add_dep("histogram", "data/prepared/test.parquet"),
        "stage histogram (class dp) reads data/prepared/test.parquet (class private, output of prepare) without "
        "listing it in meta.dp_inputs"),
    "dp_inputs_typo": (lambda s: s["histogram"]["meta"].update(dp_inputs=["data/embeddings/trian.parquet"]),
                       "stage histogram: dp_inputs entry 'data/embeddings/trian.parquet' is not one of its deps"),
    # hole 3: code that refers to a file dvc.yaml does not declare for its stage
    "code_reads_an_undeclared_file": (
        lambda s: s["histogram"]["deps"].remove("data/clusters/buckets.parquet"),
        "stage histogram: its code refers to data/clusters/buckets.parquet, which is neither a dep nor an out"),
    "code_writes_an_undeclared_file": (
        lambda s: s["resample"]["outs"].remove(next(o for o in s["resample"]["outs"] if "metrics/resample.json" in o)),
        "stage resample: its code refers to metrics/resample.json, which is neither a dep nor an out"),
    # issue 17: the gold reward model (non-private, every comparison) judges the policies, never trains them
    "gold_model_feeds_rlhf_training": (
        lambda s: s["rlhf_ppo"]["do"]["deps"].append("data/models/gold_reward"),
        "stage rlhf_ppo@release reads data/models/gold_reward, reserved for evaluation by reward_models"),
    "non_private_reference_feeds_training": (
        lambda s: s["rlhf_ppo"]["do"]["deps"].append("data/models/reward_reference"),
        "reads data/models/reward_reference, reserved for evaluation"),
    "evaluation_report_feeds_training": (
        lambda s: s["sft"]["do"]["deps"].append("metrics/rlhf.json"),
        "stage sft@release reads metrics/rlhf.json, reserved for evaluation by evaluate_rlhf (an evaluation stage's "
        "output)"),
    "gold_model_read_by_a_stage_not_marked_evaluation": (
        lambda s: s["evaluate_rlhf"]["meta"].pop("evaluation"),
        "stage evaluate_rlhf reads data/models/gold_reward, reserved for evaluation"),
    "reward_model_relabelled_dp_skipping_its_mechanism": (
        lambda s: s["dp_reward_model"]["meta"].pop("dp_mechanism"),
        "stage dp_reward_model (class dp) reads data/rlhf/features.parquet (class private"),
}


@pytest.mark.parametrize("case", sorted(MISWIRED))
def test_miswired_pipeline_is_caught(fixture_project, case):
    mutate, message = MISWIRED[case]
    root = fixture_project(mutate)
    problems, _ = lineage.check(root)
    assert any(message in p for p in problems), problems


def test_parquet_metadata_must_carry_the_stage_class(fixture_project):
    root = fixture_project(lambda s: None)
    assert lineage.check(root)[0] == []
    path = root / "data/release/instructions.parquet"
    path.parent.mkdir(parents=True)
    table = pa.table({"id": ["a"]})
    write_parquet(table, path, table.schema, table_metadata("resample", "x", "private"))
    problems, _ = lineage.check(root)
    assert problems == ["data/release/instructions.parquet: Parquet metadata says privacy 'private', "
                        "stage resample declares 'dp'"]


def test_command_fails_without_report_on_violation(fixture_project, capsys):
    root = fixture_project(_add_dep("resample", "data/embeddings/train.parquet"))
    out = root / "lineage.md"
    assert cli.main(["lineage", "--root", str(root), "--report", str(out)]) == 1
    assert "LINEAGE VIOLATION" in capsys.readouterr().err and not out.exists()


def test_report_lists_every_artifact_with_hash_class_and_epsilon(tmp_path):
    out = tmp_path / "lineage.md"
    assert cli.main(["lineage", "--root", str(REPO), "--report", str(out)]) == 0
    text = out.read_text()
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    release_md5 = next(o["md5"] for o in lock["resample"]["outs"] if o["path"] == "data/release/instructions.parquet")
    row = next(line for line in text.splitlines() if "`data/release/instructions.parquet`" in line)
    assert release_md5 in row and "| resample | dp |" in row
    composed = json.loads((REPO / "metrics/privacy.json").read_text())["epsilon"]
    assert f"{composed:.3f} composed (dp_count@instructions + histogram + train_generator)" in row
    _, arts = lineage.check(REPO)
    assert all(f"`{path}`" in text for path in arts)
    assert "- **train_generator** (class dp, DP mechanism `poisson_subsampled_gaussian`)" in text


def test_referenced_paths_sees_constants_imports_and_literals():
    from stages import evaluate, histogram

    found = lineage.referenced_paths(histogram)
    assert {"data/embeddings/train.parquet", "data/clusters/buckets.parquet", "metrics/histogram.json"} <= found
    # evaluate keeps its inputs in a dict of tuples
    assert {"data/prepared/test.parquet", "data/embeddings/pool.parquet"} <= lineage.referenced_paths(evaluate)


def test_publishable_report_withholds_private_hashes(tmp_path):
    stages = lineage.load_stages(REPO)
    _, arts = lineage.check(REPO, stages)
    text = lineage.report(REPO, stages, arts, publish=True)
    row = next(line for line in text.splitlines() if "`metrics/prepare.json`" in line)
    assert "withheld (private)" in row and arts["metrics/prepare.json"].md5 not in text
    release = next(line for line in text.splitlines() if "`data/release/instructions.parquet`" in line)
    assert arts["data/release/instructions.parquet"].md5 in release


def test_private_sets_sent_to_a_remote_backend_need_the_opt_in(fixture_project):
    root = fixture_project(lambda s: None)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["annotate"]["backend"] = "openai"
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    problems, _ = lineage.check(root)
    remote = [p for p in problems if "remote backend" in p]
    assert {p.split(" sends")[0] for p in remote} == {"stage annotate@train", "stage annotate@test"}
    assert all("annotate.allow_remote_private: true" in p for p in remote)
    params["annotate"]["allow_remote_private"] = True
    params["evaluate_alignment"]["judge"]["backend"] = "openai"  # the judge reads the private test split
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    problems, _ = lineage.check(root)
    assert {p.split(" sends")[0] for p in problems} == {"stage evaluate_alignment"}


def test_annotations_and_adapters_keep_their_inputs_class():
    _, arts = lineage.check(REPO)
    expected = {"release": "dp", "pool": "dp", "train": "private", "public": "public", "test": "private"}
    for name, cls in expected.items():
        assert arts[f"data/annotated/{name}.parquet"].privacy == cls
        if name != "test":
            assert arts[f"data/adapters/sft/{name}"].privacy == cls


def test_the_report_states_each_datasets_guarantee_for_an_artifact_of_two():
    # the release's RLHF policy descends from the instructions (the release) and from hh_rlhf (the DP
    # reward model): two separate guarantees, never one figure for both
    stages = lineage.load_stages(REPO)
    problems, arts = lineage.check(REPO, stages)
    row = next(line for line in lineage.report(REPO, stages, arts).splitlines()
               if line.startswith("| `data/adapters/rlhf/release`"))
    assert "hh_rlhf: " in row and "(dp_count@hh_rlhf + dp_reward_model)" in row
    assert "instructions: " in row and "(dp_count@instructions + histogram + train_generator)" in row


def git(root, *args):
    return subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          check=True, capture_output=True, text=True).stdout


@pytest.fixture
def git_project(tmp_path):
    """A git repository with the project's .gitignore and two declared private inputs."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    (root / "params.yaml").write_text(yaml.safe_dump({
        "data": {"private_path": "data/raw/mine/instructions.jsonl", "public_path": "data/raw/flan/i.jsonl"},
        "rl": {"data": {"private_path": "data/private/reviews.parquet"}}}))
    for path in ("data/raw/mine/instructions.jsonl", "data/raw/flan/i.jsonl", "data/private/reviews.parquet"):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("PRIVATE\n")
    return root


def test_a_private_input_tracked_by_git_is_refused(git_project):
    root = git_project
    git(root, "add", "-A")  # data/private/ is ignored: only the file under data/raw/ gets in
    assert "data/private/reviews.parquet" not in git(root, "ls-files")
    git(root, "commit", "-q", "-m", "data")
    problems, _ = lineage.check(root, stages=[])
    assert problems == [
        "params.yaml data.private_path: the private input data/raw/mine/instructions.jsonl is tracked by git, so "
        "every clone and push of the repository carries it: `git rm --cached data/raw/mine/instructions.jsonl`, "
        "move it under data/private/ (git-ignored), `dvc add data/private/<file>` to track it with DVC, and point "
        "data.private_path at it (only public data shipped in its place may be committed: a SOURCE.txt beside it "
        "with the line 'privacy: public stand-in')"]
    # a SOURCE.txt that does not declare the stand-in is no exception; one that does is
    source = root / "data/raw/mine/SOURCE.txt"
    source.write_text("mine: my users' instructions\nprivacy: private\n")
    assert len(lineage.check(root, stages=[])[0]) == 1
    source.write_text("demo: public prompts\n\nprivacy: public stand-in\nShipped in place of private data.\n")
    assert lineage.check(root, stages=[])[0] == []


def test_a_private_input_one_git_add_from_a_commit_is_refused(git_project):
    root = git_project
    problems, _ = lineage.check(root, stages=[])
    assert problems == ["params.yaml data.private_path: the private input data/raw/mine/instructions.jsonl is not "
                        "git-ignored, one `git add -A` from a commit: move it under data/private/ (git-ignored), "
                        "`dvc add data/private/<file>` to track it with DVC, and point data.private_path at it"]
    (root / "data/raw/mine/.gitignore").write_text("/instructions.jsonl\n")  # what `dvc add` writes
    assert lineage.check(root, stages=[])[0] == []


def test_data_private_is_git_ignored_but_its_dvc_pointers_are_not(git_project):
    root = git_project
    assert (REPO / "data/private/.gitkeep").is_file()
    private = root / "data/private"
    (private / "reviews.parquet.dvc").write_text("outs:\n- md5: 0\n  path: reviews.parquet\n")
    (private / ".gitignore").write_text("/reviews.parquet\n")
    (private / ".gitkeep").write_text("")
    (private / "nested").mkdir()
    (private / "nested/more.jsonl").write_text("PRIVATE\n")
    git(root, "add", "-A")
    staged = set(git(root, "ls-files", "data/private").split())
    assert staged == {"data/private/.gitignore", "data/private/.gitkeep", "data/private/reviews.parquet.dvc"}
