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

from dpinstruct.io.params import as_float
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger

SEQUENTIAL = "dp_accounting PLD (sequential composition within a partition)"
PARALLEL = "parallel composition across disjoint partitions: the maximum"


def compose_partition(entries: list[dict], delta: float) -> tuple[float, float]:
    """(PLD epsilon, PRV epsilon) of the entries of one partition composed sequentially, rounded up."""
    events = [ledger.event_from_json(e["dp_event"]) for e in entries]
    components = [(as_float(e["noise_multiplier"]), as_float(e["sampling_rate"]), int(e["steps"])) for e in entries]
    return acct.round_up(acct.epsilon_pld(events, delta)), acct.round_up(acct.epsilon_prv(components, delta))


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
    epsilon_prv = max(p["epsilon_prv"] for p in partitions.values())
    return {"epsilon": epsilon, "epsilon_prv": epsilon_prv, "delta": delta, "private": not math.isinf(epsilon),
            "accountant": SEQUENTIAL + ("; " + PARALLEL if len(partitions) > 1 else ""), "partitions": partitions}
