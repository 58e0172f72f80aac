"""`account` takes a ledger only when every entry drew its randomness in the same mode: keyed
(privacy.key_file) or secure (privacy.secure_mode, the OS). privacy.secure_mode is ONE setting for
every DP stage of every dataset, so a ledger mixing the two holds a stale entry (e.g. one stage not
re-run after the switch) and nothing may be released from it. tests/stages/test_account.py checks
one mixed ledger; here every entry in turn is the odd one out, in either direction."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from dpinstruct.io.artifacts import Outputs
from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger
from stages import account

DELTA = 1e-5
DATASETS = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())["datasets"]
EXPECTED = account.datasets({"datasets": DATASETS})[1]  # dataset -> its mechanisms, from dvc.yaml
STAGES = sorted(s for stages in EXPECTED.values() for s in stages)  # every entry account expects
PARTS = {"dp_sft": "sft", "dp_count@imdb_sft": "sft", "dp_ppo": "ppo", "dp_count@imdb_ppo": "ppo"}


def write_ledger(secure_mode: dict[str, bool]) -> None:
    """One entry per expected stage, of a small epsilon (well within every budget), in the mode given."""
    Path(ledger.LEDGER_DIR).mkdir(parents=True, exist_ok=True)
    for dataset, stages in EXPECTED.items():
        for stage in stages:
            counted = stage.startswith("dp_count@")
            sigma, q, steps = (20.0, 1.0, 1) if counted else (1.0, 0.01, 10)
            entry = ledger.make_entry(
                stage=stage, mechanism="gaussian_count" if counted else "poisson_subsampled_gaussian", dataset=dataset,
                partition={"instructions": "all", "hh_rlhf": "reward"}.get(dataset, PARTS.get(stage)),
                sensitivity=1.0, delta=DELTA,
                event=acct.component_event(sigma, q, steps), secure_mode=secure_mode[stage])
            Path(ledger.entry_path(stage)).write_text(json.dumps(entry))


def run() -> dict:
    budget = {"epsilon": 8.0, "delta": DELTA}
    with Outputs() as out:
        return account.account({"datasets": DATASETS, "privacy": budget, "rl": {"privacy": budget}, "rlhf": {"privacy": budget}}, out)


@pytest.mark.parametrize("secure", [False, True])
def test_a_ledger_in_one_mode_is_accepted(tmp_path, monkeypatch, secure):
    monkeypatch.chdir(tmp_path)
    write_ledger(dict.fromkeys(STAGES, secure))
    result = run()
    assert result["within_budget"] and set(result["stages"]) == set(STAGES)
    assert Path(account.OUT).exists()


@pytest.mark.parametrize("odd", STAGES)
@pytest.mark.parametrize("secure", [False, True])
def test_one_entry_in_the_other_mode_is_refused(tmp_path, monkeypatch, odd, secure):
    # whichever entry is stale, of whichever dataset, and whichever way the switch went
    monkeypatch.chdir(tmp_path)
    write_ledger({stage: secure if stage == odd else not secure for stage in STAGES})
    with pytest.raises(PrivacyConfigError, match=rf"entries drew their randomness in different modes \(secure_mode per "
                                                 rf"stage: .*'{odd}': {secure}.*\); privacy\.secure_mode is one setting"):
        run()
    assert not Path(account.OUT).exists()


@pytest.mark.parametrize("value", ["missing", None, "false", 0])
def test_an_entry_that_does_not_state_its_mode_is_refused(tmp_path, monkeypatch, value):
    # a missing field used to read as keyed (bool(None) is False), so a secure ledger with one entry of
    # an older pipeline version passed as one mode; "false" (a string) read as secure
    monkeypatch.chdir(tmp_path)
    write_ledger(dict.fromkeys(STAGES, False))
    path = Path(ledger.entry_path("histogram"))
    entry = json.loads(path.read_text())
    if value == "missing":
        del entry["secure_mode"]
    else:
        entry["secure_mode"] = value
    path.write_text(json.dumps(entry))
    with pytest.raises(PrivacyConfigError, match=r"entries \['histogram'\] do not state secure_mode"):
        run()
    assert not Path(account.OUT).exists()
