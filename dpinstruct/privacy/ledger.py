"""The privacy ledger: one JSON entry per DP stage under metrics/privacy/, composed by `account`.

An entry states the mechanism and everything needed to recompute its epsilon: noise multiplier,
sampling rate, steps actually taken, sensitivity (noise std = noise_multiplier x sensitivity),
neighbouring relation, delta, and the dp_accounting event itself, serialised with
``DpEvent.to_named_tuple`` so that ``event_from_json(entry["dp_event"])`` rebuilds it exactly.
Entries are class dp and may be published: they never state the number of private records
(``dataset_size`` says so; only a ``gaussian_count`` entry states a DP count N~), and their epsilons are rounded up at 1e-9, so that ledgers computed
on different CPUs (whose float sums may differ in the last bits) agree. ``fingerprint`` names the
machine that ran the mechanism (dpinstruct/io/fingerprint.py).
"""
from __future__ import annotations

import json
import math
from collections import namedtuple
from pathlib import Path

import dp_accounting

from dpinstruct.io.fingerprint import fingerprint
from dpinstruct.privacy.accounting import NEIGHBOURING, epsilon_pld, epsilon_prv_of, prv_components, round_up

LEDGER_DIR = Path("metrics/privacy")
DATASET_SIZE = ("not published: q, T and sigma come from params.yaml; where a size is needed, the DP count N~ "
                "of the dp_count entry of this dataset and partition stands in for N")


def event_to_json(event: dp_accounting.DpEvent) -> dict:
    def convert(value):
        if hasattr(value, "_fields"):
            return {f: convert(getattr(value, f)) for f in value._fields}
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        return value

    return convert(event.to_named_tuple())


def event_from_json(obj: dict) -> dp_accounting.DpEvent:
    def convert(value):
        if isinstance(value, dict) and "class_name" in value:
            fields = {k: convert(v) for k, v in value.items()}
            return namedtuple(f"_{value['class_name']}", fields)(**fields)
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value

    return dp_accounting.DpEvent.from_named_tuple(convert(obj))


def finite(x):
    """JSON has no infinity: non-finite floats (also nested) become "inf"/"-inf"/"nan", which
    params.as_float reads back."""
    if isinstance(x, dict):
        return {k: finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def make_entry(*, stage: str, mechanism: str, dataset: str, partition: str, event: dp_accounting.DpEvent,
               sensitivity: float, delta: float, neighbouring: str = NEIGHBOURING, **extra) -> dict:
    """A ledger entry written FROM the mechanism's DpEvent, the one source of truth ``account``
    composes: its epsilon (PLD), the PRV cross-check where opacus models the event (else null), and
    the event's noise multiplier, sampling rate and steps when it is one (subsampled) Gaussian
    component. ``dataset`` and ``partition`` say which private records it touches (``composition``
    composes by them); ``neighbouring`` is the relation the guarantee holds under (a record, or a user)."""
    components = prv_components(event)
    private = not isinstance(event, dp_accounting.NonPrivateDpEvent)
    single = dict(zip(("noise_multiplier", "sampling_rate", "steps"), components[0])) \
        if components is not None and len(components) == 1 else {}
    derived = sorted({"noise_multiplier", "noise_std", "epsilon", "epsilon_prv"} & set(extra)
                     | ({"sampling_rate", "steps"} & set(extra) if private else set()))
    if derived:  # two sources for one number could drift apart; only a non-private run states its q and T
        raise TypeError(f"make_entry: {derived} come from the event, not from arguments")
    if not private:
        single.update({k: extra.pop(k) for k in ("sampling_rate", "steps") if k in extra})
    prv = epsilon_prv_of([event], delta)
    return finite({
        "stage": stage, "mechanism": mechanism, "private": private, "dataset": dataset, "partition": partition,
        **single, "sensitivity": sensitivity,
        **({"noise_std": single["noise_multiplier"] * sensitivity if private else 0.0} if single else {}),
        "neighbouring": neighbouring, "delta": delta,
        "epsilon": round_up(epsilon_pld([event], delta)),
        "epsilon_prv": None if prv is None else round_up(prv),
        "dataset_size": DATASET_SIZE,
        "accountant": "dp_accounting PLD (cross-check: opacus PRV" + (")" if prv is not None else
                                                                       ", which does not model this event)"),
        "dp_event": event_to_json(event), "fingerprint": fingerprint(), **extra,
    })


def entry_path(stage: str) -> Path:
    return LEDGER_DIR / f"{stage}.json"


def read_entries(directory: Path = LEDGER_DIR) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(directory).glob("*.json"))]
