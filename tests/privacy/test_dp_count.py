"""The DP count N~ (dpinstruct/privacy/dp_count.py): its release from a keyed stream, and how a DP-SGD
stage reads it back: the count from the entry, the calibration's prior from the stored event only."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dpinstruct.io.errors import MissingInputError, PrivacyConfigError
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_count, ledger


class Stream:
    """A keyed stream as DPRandom exposes it: normal(shape, std) from its own generator."""

    def __init__(self, seed: int):
        self._rng = np.random.default_rng(seed)

    def normal(self, shape, std):
        return self._rng.normal(0.0, std, shape)


def test_the_release_adds_gaussian_noise_of_the_given_sigma():
    draws = np.array([dp_count.release(100, 5.0, Stream(i)) for i in range(4000)])
    assert abs(draws.mean() - 100) < 0.5 and draws.std() == pytest.approx(5.0, rel=0.05)


def test_a_non_private_count_is_exact():
    assert dp_count.release(100, 0.0, Stream(0)) == 100.0


def _write(tmp_path, monkeypatch, event, noisy_count=3975.1):
    monkeypatch.chdir(tmp_path)
    entry = ledger.make_entry(stage="dp_count@instructions", mechanism=dp_count.MECHANISM, dataset="instructions",
                              partition="all", sensitivity=1.0, delta=1e-5, event=event, noisy_count=noisy_count)
    path = dp_count.entry_path("instructions")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(ledger.finite(entry)))
    return entry


def test_read_takes_the_prior_from_the_stored_event(tmp_path, monkeypatch):
    _write(tmp_path, monkeypatch, acct.histogram_event(50.0))
    noisy, component, entry = dp_count.read("instructions")
    assert noisy == 3975.1 and component == (50.0, 1.0, 1) and entry["mechanism"] == dp_count.MECHANISM


def test_read_refuses_an_event_that_is_not_one_gaussian_release(tmp_path, monkeypatch):
    two = acct.dp_accounting.ComposedDpEvent([acct.histogram_event(50.0), acct.histogram_event(60.0)])
    _write(tmp_path, monkeypatch, two)
    with pytest.raises(PrivacyConfigError, match=r"dp_count@instructions.json: the DP count's stored event is not one"):
        dp_count.read("instructions")


def test_read_names_the_stage_to_run_when_the_count_is_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MissingInputError, match=r"dvc repro dp_count@imdb_sft"):
        dp_count.read("imdb_sft")
