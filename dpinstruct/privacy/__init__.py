"""Privacy: the semantics every DP stage of the pipeline follows, stated once here.

Neighbouring relation: add or remove ONE record, a record being one private train instruction
(record-level DP). Under it the number of records N is itself private (sensitivity 1): sampling
rates, step counts and noise multipliers come from params.yaml, never from N, and no ledger entry or
dp artifact states N.

Mechanisms and their sensitivities:

* DP-Adam (Algorithm 1, ``dp_adam``): T steps; each step includes every record independently with
  probability q (Poisson sampling); each included record's gradient is clipped to L2 norm C, so
  adding or removing a record moves the summed gradient by at most C; Gaussian noise of std sigma C
  is added to the sum once per step. Event: T-fold self-composition of PoissonSampled(q,
  Gaussian(sigma)). Records are filtered (too long) by looking at each record alone, which keeps
  neighbouring datasets neighbouring.
* DP histogram (Algorithm 2, ``histogram``): every record votes for exactly one bin, so adding or
  removing a record changes one count by 1 (L2 sensitivity 1); i.i.d. Gaussian noise of std sigma_h
  on every bin. Event: Gaussian(sigma_h). Clipping negatives to 0 is post-processing.

* User-level DP (``user_level``), when the private train split has ``user_id``s: the unit is a
  user with all their instructions (``add_or_remove_one_user``). DP-Adam Poisson-samples users,
  averages a sampled user's (at most ``max_records_per_user``) records into one gradient and clips
  it to C; the histogram spreads one vote over each user's records (L2 sensitivity 1); delta must
  be below 1/(number of users). Same events as above, over users.

* DP-PPO (Wu et al., ``dpinstruct.rl.ppo``): the unit is one prompt; the gradient of all its
  rollouts' losses is averaged into one (``dp_adam.group_by_unit``) and clipped to C, so adding or
  removing a prompt moves the sum by at most C; otherwise as DP-Adam.

Composition: every ledger entry names its private ``dataset`` and the ``partition`` it reads
(``composition``): mechanisms on the same records compose sequentially (``accounting``, PLD with an
opacus PRV cross-check; the budget is met by both), disjoint partitions of a dataset in parallel,
and different datasets have separate guarantees. The release's mechanisms (generator, histogram)
all read the same instructions. What
is computed from DP outputs and public data only (the pool, the clusters, the release) is
post-processing and costs nothing more; ``lineage`` checks on the DVC graph that nothing else
reaches a dp or public artifact, and ``bundle`` publishes only dp and public files.

Evidence beside the proofs: ``audit`` (the one-run lower bound of Steinke et al. 2023, run by
``dpinstruct audit`` on canaries, ``dpinstruct.canary_audit``) and the memorisation gate (stage
``memorisation``).

Randomness: every DP random number (sampling and noise) comes from ``randomness``, a secret key's
keyed streams or the OS's CSPRNG; never from a seed an attacker can read. The ledger (``ledger``)
records each mechanism's event, rounded up, for ``account`` to compose.
"""
