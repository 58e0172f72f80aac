"""DP randomness: the secret key's handling, keyed streams (replayable by the key only), the OS
source (never replayable), and the distributions of the uniforms, Bernoullis and Gaussians."""
from __future__ import annotations

import re
import stat
import subprocess

import numpy as np
import pytest
import yaml
from scipy import stats

from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.io.settings.privacy import Randomness
from dpinstruct.privacy import randomness as R


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    path = tmp_path / "keys" / "secret.key"
    monkeypatch.setenv(R.KEY_FILE_ENV, str(path))
    return path


def stream(purpose="p", *binding, secure=False):
    return R.DPRandom.for_purpose(purpose, *(binding or ("b",)), privacy=Randomness(secure_mode=secure))


def test_key_is_made_once_private_and_reused(key_file):
    first = R.load_key(None)
    assert len(first) == 32 and key_file.read_bytes() == first
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert R.load_key(None) == first


def test_key_file_from_params_when_no_environment_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(R.KEY_FILE_ENV, raising=False)
    path = tmp_path / "from-params.key"
    assert R.key_path(Randomness(key_file=str(path))) == path
    assert R.key_path(None) == R.key_path(Randomness()) and R.key_path(None).name == "secret.key"
    assert ".config" in R.key_path(None).parts  # outside the project, so queued `dvc exp` copies find it


def test_corrupt_key_is_refused(key_file):
    key_file.parent.mkdir()
    key_file.write_bytes(b"short")
    key_file.chmod(0o600)
    with pytest.raises(PrivacyConfigError, match="holds 5 bytes, expected 32"):
        R.load_key(None)


def test_key_inside_a_git_work_tree_must_be_ignored(tmp_path, monkeypatch):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.setenv(R.KEY_FILE_ENV, str(tmp_path / "secret.key"))
    with pytest.raises(PrivacyConfigError, match="is not git-ignored"):
        R.load_key(None)
    assert not (tmp_path / "secret.key").exists()
    (tmp_path / ".gitignore").write_text("secret.key\n")
    assert len(R.load_key(None)) == 32


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620], ids=lambda m: f"{m:04o}")
def test_a_key_other_users_may_read_or_write_is_refused(key_file, mode):
    key_file.parent.mkdir()
    key_file.write_bytes(bytes(32))
    key_file.chmod(mode)
    with pytest.raises(PrivacyConfigError, match=f"{re.escape(str(key_file))} has permissions {mode:04o}.*"
                                                 f"`chmod 600 {re.escape(str(key_file))}`"):
        R.load_key(None)
    key_file.chmod(0o600)
    assert R.load_key(None) == bytes(32)


def test_an_existing_private_key_outside_any_project_is_used(tmp_path, monkeypatch):
    monkeypatch.delenv(R.KEY_FILE_ENV, raising=False)
    path = tmp_path / "elsewhere" / "secret.key"
    path.parent.mkdir()
    path.write_bytes(b"k" * 32)
    path.chmod(0o600)
    assert R.load_key(Randomness(key_file=str(path))) == b"k" * 32
    stream = R.DPRandom.for_purpose("p", "b", privacy=Randomness(key_file=str(path)))
    assert stream.replayable and stream.uniform(4).shape == (4,)


@pytest.fixture
def dvc_project(tmp_path):
    """A project's dvc.yaml (no git): a plain stage, and a foreach stage with templated outs."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {"out": "results/from-params"}}))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "train": {"cmd": "true", "outs": ["results/model", {"reports/scores.json": {"cache": False}},
                                          "${train.out}"]},
        "per_set": {"foreach": {"a": {"x": 1}, "b": {"x": 2}},
                    "do": {"cmd": "true", "outs": ["sets/${key}/adapter", {"sets-${item.x}.json": {"cache": False}}]}},
    }}))
    return root


@pytest.mark.parametrize("where, message", [
    ("data/secret.key", "the folder data/ of the DVC project"),
    ("dvclive/keys/secret.key", "the folder dvclive/ of the DVC project"),
    ("results/model/secret.key", "the output results/model declared in the dvc.yaml"),
    ("reports/scores.json/secret.key", "the output reports/scores.json declared"),
    ("results/from-params/secret.key", "the output results/from-params declared"),  # ${...} from params.yaml
    ("sets/a/adapter/keys/secret.key", "the output sets/${...} declared"),  # a foreach body's ${key}
    ("sets-7.json/secret.key", "the output sets-${...} declared"),
])
def test_a_key_inside_a_dvc_output_is_refused(dvc_project, monkeypatch, where, message):
    path = dvc_project / where
    monkeypatch.setenv(R.KEY_FILE_ENV, str(path))
    with pytest.raises(PrivacyConfigError, match=re.escape(f"{path} lies inside {message}")):
        R.load_key(None)
    assert not path.exists()
    if path.parent != dvc_project:
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(32))
    path.chmod(0o600)
    with pytest.raises(PrivacyConfigError, match="outside every DVC output"):  # an existing key too
        R.load_key(None)


def test_a_key_in_a_project_but_outside_its_outputs_is_accepted(dvc_project, monkeypatch):
    monkeypatch.setenv(R.KEY_FILE_ENV, str(dvc_project / "results" / "keys" / "secret.key"))
    assert len(R.load_key(None)) == 32


def test_relative_key_paths_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(R.KEY_FILE_ENV, raising=False)
    with pytest.raises(PrivacyConfigError, match=r"privacy.key_file is the relative path 'keys/secret.key'.*"
                                                 r"`dvc exp run`.*NEW key"):
        R.load_key(Randomness(key_file="keys/secret.key"))
    monkeypatch.setenv("KEYS", "keys")  # $VARS are expanded first: still relative
    with pytest.raises(PrivacyConfigError, match=r"privacy.key_file is the relative path '\$KEYS/secret.key'"):
        R.key_path(Randomness(key_file="$KEYS/secret.key"))
    monkeypatch.setenv(R.KEY_FILE_ENV, "secret.key")
    with pytest.raises(PrivacyConfigError, match=r"\$DPINSTRUCT_KEY_FILE is the relative path 'secret.key'"):
        R.load_key(Randomness(key_file=str(tmp_path / "absolute.key")))  # the environment variable wins, and is refused
    with pytest.raises(PrivacyConfigError, match="relative path"):
        R.DPRandom.for_purpose("p", "b", privacy=Randomness())
    assert not list(tmp_path.iterdir())  # no key made in the working directory
    monkeypatch.setenv(R.KEY_FILE_ENV, "~/.config/dpinstruct/secret.key")
    assert R.key_path(None).is_absolute() and "~" not in str(R.key_path(None))
    monkeypatch.setenv("KEYS", str(tmp_path / "keys"))
    monkeypatch.setenv(R.KEY_FILE_ENV, "$KEYS/secret.key")
    assert R.key_path(None) == tmp_path / "keys" / "secret.key"


def test_keyed_streams_replay_with_the_key_only(key_file):
    a, b = stream("noise", "run1"), stream("noise", "run1")
    assert np.array_equal(a.normal((1000,), 1.0), b.normal((1000,), 1.0))
    assert np.array_equal(a.uniform(10), b.uniform(10))
    reference = stream("noise", "run1").normal((1000,), 1.0)
    # another purpose, another binding (params or data) or another key: unrelated draws
    assert not np.array_equal(reference, stream("sampling", "run1").normal((1000,), 1.0))
    assert not np.array_equal(reference, stream("noise", "run2").normal((1000,), 1.0))
    key_file.unlink()
    assert not np.array_equal(reference, stream("noise", "run1").normal((1000,), 1.0))


def test_binding_parts_do_not_run_together(key_file):
    # ("ab", "c") and ("a", "bc") must not derive the same stream
    assert not np.array_equal(stream("p", "ab", "c").uniform(8), stream("p", "a", "bc").uniform(8))


def test_secure_mode_needs_no_key_and_never_repeats(key_file):
    a, b = stream(secure=True), stream(secure=True)
    assert not a.replayable and a.state() is None
    assert not np.array_equal(a.uniform(64), b.uniform(64))
    assert not np.array_equal(a.bernoulli(1000, 0.5), b.bernoulli(1000, 0.5))
    assert not key_file.exists()  # secure mode never makes or reads a key


def test_state_and_restore_continue_a_keyed_stream(key_file):
    whole = stream()
    expected = [whole.uniform(5), whole.normal((3,), 2.0), whole.uniform(5)]
    part = stream()
    part.uniform(5)
    saved = part.state()
    resumed = stream()
    resumed.restore(saved)
    assert np.array_equal(resumed.normal((3,), 2.0), expected[1]) and np.array_equal(resumed.uniform(5), expected[2])
    assert stream().resume_tag() == whole.resume_tag() != stream("other").resume_tag()


@pytest.mark.parametrize("secure", [False, True])
def test_distributions(key_file, secure):
    s = stream(secure=secure)
    u = s.uniform(200_000)
    assert u.min() >= 0 and u.max() < 1 and stats.kstest(u, "uniform").pvalue > 1e-6
    q = 0.0334
    hits = s.bernoulli(200_000, q).sum()
    assert abs(hits - q * 200_000) < 6 * np.sqrt(200_000 * q * (1 - q))
    z = s.normal((200, 1000), 10.0)
    assert z.shape == (200, 1000)
    # KS at 200,000 draws: the right scale passes, a 5% wrong one fails (p ~ 1e-26)
    assert stats.kstest(z.ravel() / 10.0, "norm").pvalue > 1e-6
    assert stats.kstest(z.ravel() / 10.5, "norm").pvalue < 1e-6
    assert abs(z.std() - 10.0) < 0.1 and abs(z.mean()) < 0.15
