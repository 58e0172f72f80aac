"""dvc.yaml read without DVC: foreach stages expand as DVC expands them, and every DP mechanism names
the dataset whose budget it spends (account composes by it)."""
from __future__ import annotations

import pytest

from dpinstruct.io import pipeline_spec
from dpinstruct.io.errors import PipelineError

SPEC = """stages:
  count:
    foreach:
      a: {input: x.parquet, dataset: one, n: 3}
      b: {input: y.parquet, dataset: two, n: 4}
    do:
      cmd: python -m stages.count ${key}
      deps: ["${item.input}"]
      meta: {privacy: dp, dp_mechanism: gaussian_count, dp_dataset: "${item.dataset}", n: "${item.n}",
             out: "m/count@${key}-${item.input}"}
  train:
    cmd: python -m stages.train
    meta: {privacy: dp, dp_mechanism: poisson_subsampled_gaussian, dp_dataset: one}
  report:
    cmd: python -m stages.report
    meta: {privacy: public}
"""


def test_foreach_expands_with_key_and_item_fields(tmp_path):
    (tmp_path / "dvc.yaml").write_text(SPEC)
    stages = pipeline_spec.stages(tmp_path)
    assert sorted(stages) == ["count@a", "count@b", "report", "train"]
    assert stages["count@b"]["cmd"] == "python -m stages.count b" and stages["count@b"]["deps"] == ["y.parquet"]
    assert stages["count@a"]["meta"]["n"] == 3  # a whole ${item.x} keeps its type
    assert stages["count@a"]["meta"]["out"] == "m/count@a-x.parquet"
    assert pipeline_spec.dp_mechanisms(tmp_path) == {"count@a": "one", "count@b": "two", "train": "one"}


def test_a_mechanism_without_its_dataset_is_refused(tmp_path):
    (tmp_path / "dvc.yaml").write_text(SPEC.replace(", dp_dataset: one}", "}"))
    with pytest.raises(PipelineError, match=r"dvc.yaml, stage train: a dp_mechanism stage must name its meta.dp_dataset"):
        pipeline_spec.dp_mechanisms(tmp_path)


def test_the_projects_mechanisms_each_name_a_declared_dataset(repo_params):
    found = pipeline_spec.dp_mechanisms()
    assert set(found.values()) == set(repo_params["datasets"])
    assert found["train_generator"] == found["histogram"] == "instructions"
