"""Ledger entries: the stored DpEvent rebuilds exactly (it is what `account` composes), JSON stays
strict (infinities as strings), and entries are read in a stable order."""
from __future__ import annotations

import json

import dp_accounting
import pytest

from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger


@pytest.mark.parametrize("event", [
    acct.dp_sgd_event(0.5503, 0.03, 17),
    acct.histogram_event(10.0),
    dp_accounting.NonPrivateDpEvent(),
    dp_accounting.ComposedDpEvent([acct.dp_sgd_event(0.9, 0.05, 400),
                                   dp_accounting.SelfComposedDpEvent(acct.histogram_event(20.0), 2)]),
])
def test_the_stored_event_rebuilds_exactly(event):
    stored = json.loads(json.dumps(ledger.event_to_json(event), allow_nan=False))
    assert ledger.event_from_json(stored) == event


def test_infinities_become_strings_and_nothing_else_changes():
    assert ledger.finite({"e": float("inf"), "l": [1.5, float("-inf")], "s": "x", "n": None}) == \
        {"e": "inf", "l": [1.5, "-inf"], "s": "x", "n": None}


def test_entries_are_read_in_name_order(tmp_path):
    for name in ("train_generator", "dp_count@instructions", "histogram"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"stage": name}))
    assert [e["stage"] for e in ledger.read_entries(tmp_path)] == ["dp_count@instructions", "histogram",
                                                                    "train_generator"]
    assert ledger.entry_path("dp_sft").as_posix() == "metrics/privacy/dp_sft.json"
