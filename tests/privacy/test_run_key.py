"""The run key (dpinstruct/privacy/run_key.py): it, and the first draws of every DP stream derived
from it, change when ANY dependency of the run changes (a params value, a data file's bytes, a
file inside a model folder, the code the stage runs, the stage's name) and stay identical when
nothing does (replay). Two runs that differ anywhere must never share noise: publishing both
would let the noise cancel out of any linear statistic of the two."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from dpinstruct.io.settings.privacy import Randomness
from dpinstruct.privacy import run_key as rk
from dpinstruct.privacy.randomness import DPRandom

PRIVACY = {"epsilon": 6.0, "delta": 1e-5, "secure_mode": False}  # a params section the key binds
RANDOMNESS = Randomness(secure_mode=False)
STAGE = "histogram"  # a real stage module: the code digest is its import closure
PARAMS = ({"sigma": 10.0, "k": 8}, PRIVACY)
DATA, MODEL = Path("data/prepared/train.parquet"), Path("data/models/generator")


@pytest.fixture
def inputs(tmp_path, monkeypatch, tmp_path_factory):
    """A data file and a model folder in a scratch directory, and a test key outside it."""
    monkeypatch.setenv("DPINSTRUCT_KEY_FILE", str(tmp_path_factory.mktemp("key") / "run-key-test.key"))
    monkeypatch.chdir(tmp_path)
    DATA.parent.mkdir(parents=True)
    DATA.write_bytes(b"private rows \x00\x01\x02" * 100)
    (MODEL / "sub").mkdir(parents=True)
    (MODEL / "config.json").write_text('{"hidden_size": 576}')
    (MODEL / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (MODEL / "sub" / "tokenizer.json").write_text('{"vocab": {}}')
    return tmp_path


def draws(stage=STAGE, params=PARAMS, paths=(DATA, MODEL), module=None) -> tuple[tuple, dict]:
    """(run key, first draws of the stage's noise and Poisson streams bound to it)."""
    key = rk.run_key(stage, params, paths, module=module)
    noise = DPRandom.for_purpose(f"{stage}/noise", *key, privacy=RANDOMNESS).normal((6,), 1.0)
    poisson = DPRandom.for_purpose(f"{stage}/poisson", *key, privacy=RANDOMNESS).uniform(6)
    return key, {"noise": noise.tolist(), "poisson": poisson.tolist()}


def assert_all_differ(a, b):
    (key_a, draws_a), (key_b, draws_b) = a, b
    assert key_a != key_b
    for name in draws_a:
        assert not np.isclose(draws_a[name], draws_b[name]).any(), name  # every draw differs, not just one


def test_nothing_changed_replays_the_key_and_every_draw(inputs):
    first = draws()
    assert draws() == first and draws() == first
    key = first[0]
    assert key[0] == f"stage:{STAGE}" and key[1].startswith("params:") and key[-1].startswith("code:")
    assert [k.split(":")[1] for k in key[2:-1]] == [MODEL.as_posix(), DATA.as_posix()]  # every input, sorted
    # the order the inputs are listed in does not matter, nor how a number is written (`dvc exp run -S k=8.0`)
    assert draws(paths=(MODEL, DATA)) == first
    assert draws(params=({"sigma": 10, "k": 8.0}, PRIVACY)) == first


@pytest.mark.parametrize("change", [{"sigma": 10.5}, {"k": 9}, {"extra": None}])
def test_a_params_value_changes_the_key_and_the_draws(inputs, change):
    first = draws()
    assert_all_differ(first, draws(params=({**PARAMS[0], **change}, PRIVACY)))
    assert_all_differ(first, draws(params=(PARAMS[0], {**PRIVACY, "epsilon": 4.0})))


def test_a_data_files_bytes_change_the_key_and_the_draws(inputs):
    first = draws()
    original = DATA.read_bytes()
    DATA.write_bytes(original[:-1] + b"\x03")  # one byte, same length
    assert_all_differ(first, draws())
    DATA.write_bytes(original)  # content, not mtime: the same bytes replay
    assert draws() == first


@pytest.mark.parametrize("edit", ["extra_file", "one_byte", "renamed", "nested_file", "removed"])
def test_any_file_inside_a_model_folder_changes_the_key_and_the_draws(inputs, edit):
    first = draws()
    if edit == "extra_file":
        (MODEL / "NOTES.md").write_text("harmless")
    elif edit == "one_byte":
        data = bytearray((MODEL / "model.safetensors").read_bytes())
        data[1000] ^= 1
        (MODEL / "model.safetensors").write_bytes(bytes(data))
    elif edit == "renamed":
        (MODEL / "config.json").rename(MODEL / "config2.json")
    elif edit == "nested_file":
        (MODEL / "sub" / "tokenizer.json").write_text('{"vocab": {"a": 0}}')
    else:
        (MODEL / "sub" / "tokenizer.json").unlink()
    assert_all_differ(first, draws())


def test_a_folder_is_keyed_by_content_not_by_copy_or_link(inputs):
    first = draws()
    shutil.copytree(MODEL, inputs / "elsewhere")
    shutil.rmtree(MODEL)
    shutil.copytree(inputs / "elsewhere", MODEL)  # a fresh copy: new mtimes and inodes, the same bytes
    assert draws() == first
    shutil.rmtree(MODEL)
    MODEL.symlink_to(inputs / "elsewhere", target_is_directory=True)
    assert draws() == first  # a symlinked folder (how the tests link the generator) keys by what it holds


def test_a_missing_input_is_refused_by_name(inputs):
    shutil.rmtree(MODEL)
    with pytest.raises(FileNotFoundError, match=r"data/models/generator does not exist \(run the stages before it"):
        rk.run_key(STAGE, PARAMS, (DATA, MODEL))


def test_the_code_changes_the_key_and_the_draws(inputs, monkeypatch):
    first = draws()
    real = rk.code_digest
    monkeypatch.setattr(rk, "code_digest", lambda stage: real(stage) + "-edited")
    assert_all_differ(first, draws())


def copy_project_code(to: Path) -> Path:
    for folder in ("dpinstruct", "stages"):
        shutil.copytree(rk.ROOT / folder, to / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return to


def test_one_changed_module_in_the_import_closure_changes_the_key(inputs, monkeypatch, tmp_path_factory):
    first = draws()
    root = copy_project_code(tmp_path_factory.mktemp("code"))
    monkeypatch.setattr(rk, "ROOT", root)
    assert rk.code_digest(STAGE) == first[0][-1].removeprefix("code:")  # a faithful copy: the same digest
    assert draws() == first
    # a module the stage does not import: nothing changes
    assert "stages/generate.py" not in {p.as_posix() for p in rk.code_files(root, root / "stages" / f"{STAGE}.py")}
    with open(root / "stages" / "generate.py", "a") as f:
        f.write("\n# edited\n")
    assert draws() == first
    # a docstring-only package __init__ it imports runs no code and is no dvc.yaml dep: nothing changes
    # (else an edit `dvc status` never sees would re-draw the noise)
    with open(root / "dpinstruct" / "privacy" / "__init__.py", "a") as f:
        f.write('"""an edited description"""\n')
    assert draws() == first
    # a library module it imports (randomness.py, through dp_count and the histogram): everything changes
    with open(root / "dpinstruct" / "privacy" / "randomness.py", "a") as f:
        f.write("\n# edited\n")
    assert_all_differ(first, draws())


def test_the_stage_name_changes_the_key_and_the_draws(inputs):
    # two items of one foreach stage run the same module on the same inputs: their names keep them apart
    one = rk.run_key("dp_count@instructions", PARAMS, (DATA,), module="dp_count")
    other = rk.run_key("dp_count@imdb_sft", PARAMS, (DATA,), module="dp_count")
    assert one[1:] == other[1:] and one != other
    purpose = "dp_count/noise"  # the same purpose string: only the run key tells the streams apart
    a = DPRandom.for_purpose(purpose, *one, privacy=RANDOMNESS).normal((6,), 1.0)
    b = DPRandom.for_purpose(purpose, *other, privacy=RANDOMNESS).normal((6,), 1.0)
    assert not np.isclose(a, b).any()
    # and a different module under the same name is other code
    assert rk.run_key("dp_count@instructions", PARAMS, (DATA,), module="histogram")[-1] != one[-1]


def test_a_missing_stage_module_is_refused(inputs):
    with pytest.raises(FileNotFoundError, match=r"the run key needs the module .*stages/no_such_stage\.py"):
        rk.run_key("no_such_stage", PARAMS, (DATA,))


def test_the_key_file_changes_every_draw_but_not_the_run_key(inputs, monkeypatch, tmp_path_factory):
    first = draws()
    monkeypatch.setenv("DPINSTRUCT_KEY_FILE", str(tmp_path_factory.mktemp("key") / "other.key"))
    second = draws()
    assert second[0] == first[0]  # the run key names the run; the secret is not part of it
    assert not np.isclose(first[1]["noise"], second[1]["noise"]).any()
