"""Composition of ledger entries across private datasets and their partitions.

Every entry names the private ``dataset`` it touches (``instructions``, ``imdb``, ...) and the
``partition`` of that dataset its mechanism reads (``all`` when it reads every record).

* Within a partition, entries compose sequentially (PLD, with opacus' PRV as cross-check): the
  mechanisms read the same records.
* Across disjoint partitions of one dataset, they compose in parallel: (max epsilon, delta). This
  holds because the partition rule assigns a record by looking at that record alone (a seeded hash
  of its content or id, ``dpinstruct.text.splits.partition_of``, after a dedup that keeps copies of
  one record together): a neighbouring dataset differs in one record,
  which lies in exactly one partition, so only that partition's mechanisms see a difference. It
  holds adaptively too: a mechanism on one partition that starts from another's DP output (DP-PPO
  from the DP-SFT adapter) treats that output as fixed public input, which is post-processing for a
  record of the other partition.
* Different datasets get separate guarantees: a record of one is never a record of another.
"""
from __future__ import annotations

import math
from collections import defaultdict

from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger

SEQUENTIAL = "dp_accounting PLD (sequential composition within a partition)"
PARALLEL = "parallel composition across disjoint partitions: the maximum"


def compose_partition(entries: list[dict], delta: float) -> tuple[float, float | None]:
    """(PLD epsilon, PRV epsilon) of the entries of one partition composed sequentially, rounded up;
    PRV is None when opacus' PRV does not model one of the stored events."""
    events = [ledger.event_from_json(e["dp_event"]) for e in entries]  # the stored events, nothing rebuilt
    prv = acct.epsilon_prv_of(events, delta)
    return acct.round_up(acct.epsilon_pld(events, delta)), None if prv is None else acct.round_up(prv)


def compose_dataset(entries: list[dict], delta: float) -> dict:
    """One dataset's guarantee: each partition composed sequentially, the partitions in parallel."""
    by_partition: dict[str, list[dict]] = defaultdict(list)
    for e in entries:
        by_partition[e["partition"]].append(e)
    partitions = {}
    for name, part in sorted(by_partition.items()):
        pld, prv = compose_partition(part, delta)
        partitions[name] = {"epsilon": pld, "epsilon_prv": prv, "stages": sorted(e["stage"] for e in part)}
    epsilon = max(p["epsilon"] for p in partitions.values())
    prvs = [p["epsilon_prv"] for p in partitions.values()]
    epsilon_prv = None if None in prvs else max(prvs)  # null: PRV does not model every event
    return {"epsilon": epsilon, "epsilon_prv": epsilon_prv, "delta": delta, "private": not math.isinf(epsilon),
            "accountant": SEQUENTIAL + ("; " + PARALLEL if len(partitions) > 1 else ""), "partitions": partitions}
