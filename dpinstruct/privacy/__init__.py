"""Privacy: the semantics every DP stage of the pipeline follows, stated once here.

Threat model: published are the export bundle (``dpinstruct export``, ``dpinstruct.tools.bundle``) and every
dp-class output; the attacker is assumed to hold all of it, plus params.yaml and the code. The git
repository (including dvc.lock and the private-class metrics) and the DVC remote hold private
information: they stay with the data owner. Even there, raw private inputs go to DVC (cache and
remote), never into git history (``dpinstruct.tools.lineage`` refuses a private input that git tracks), and the
secret key behind the DP randomness goes into neither (``randomness``). Every guarantee below is
against this attacker.

Neighbouring relation: add or remove ONE unit of the RAW private file (``data.private_path``), a
unit being one instruction (record-level DP) or, with the param ``user_level.enabled: true``, one
user with all their instructions (user-level; a param, never inferred from whether rows name users). The guarantee is about that file, not about a split: every private
preprocessing step is 1-stable (for any file D and unit x, the input of each mechanism for D+x
differs from that for D by x's own rows only), so neighbouring files give neighbouring mechanism
inputs. Step by step (property-tested in tests/text/test_stability.py and tests/rl/test_stability.py,
end to end on D vs D+x in tests/stages/test_prepare.py):

* reading, normalising, the empty and length filters, the generator's max_seq_len skip: a rule on
  each row alone;
* exact dedup: within a unit only; a row without a user is the unit of its (normalised,
  case-sensitive) text, so across such rows dedup is a set operation (a copy adds nothing; a case
  variant is its own unit and never replaces a row); within a unit rows are taken in content order
  (text, then id), never in the order of ids a reader made from line numbers; the paper's cross-row word n-gram dedup is not stable (one row
  can remove many) and runs within a user's rows only (prepare_public, on public data, keeps it);
* the test / val / train split: a seeded hash of the unit's key (its user id, else its text) against
  expected shares (``dpinstruct.text.splits``); no permutation filling fixed sizes, no cap;
* IMDb: copies of a review merged (set semantics on the cleaned text), the parts by a seeded hash of
  that text; HH-RLHF: copies of a comparison merged, the parts by a hash of its id (itself a hash
  of the two texts) (``dpinstruct.rl.data``, ``dpinstruct.rl.preferences``).

Under add/remove-one the number of units N is itself private (sensitivity 1): sampling rates, step
counts and noise multipliers come from params.yaml, never from N. Where a stage needs a size (the
divisor of the noisy gradient sum, the delta < 1/N refusal) it uses a DP count N~ (``dp_count``:
Gaussian, sensitivity 1, its own ledger entry composed with its dataset). No published number is a
function of an exact private count: no ledger entry or dp artifact states N, and no ratio of
published numbers gives it (tests/privacy/test_release_attack.py computes them as an attacker would).

Mechanisms and their sensitivities:

* DP-Adam (Algorithm 1, ``dpinstruct.training.dp_adam``): T steps; each step includes every record independently with
  probability q (Poisson sampling); each included record's gradient is clipped to L2 norm C, so
  adding or removing a record moves the summed gradient by at most C; Gaussian noise of std sigma C
  is added to the sum once per step. Event: T-fold self-composition of PoissonSampled(q,
  Gaussian(sigma)). Records are filtered (too long) by looking at each record alone, which keeps
  neighbouring datasets neighbouring.
* DP histogram (Algorithm 2, ``histogram``): every record votes for exactly one bin, so adding or
  removing a record changes one count by 1 (L2 sensitivity 1); i.i.d. Gaussian noise of std sigma_h
  on every bin. Event: Gaussian(sigma_h). Clipping negatives to 0 is post-processing.

* User-level DP (``user_level``), when the param ``user_level.enabled`` is true (a param, never
  inferred from the data; with false, ``user_id`` is dropped as the file is read): the unit is a
  user with all their instructions (``add_or_remove_one_user``). DP-Adam Poisson-samples users,
  averages a sampled user's (at most ``max_records_per_user``) records into one gradient and clips
  it to C; the histogram spreads one vote over each user's records (L2 sensitivity 1); delta must
  be below 1/(number of users). Same events as above, over users.

* DP-PPO (Wu et al., ``dpinstruct.rl.ppo``): the unit is one prompt; the gradient of all its
  rollouts' losses is averaged into one (``dpinstruct.training.dp_adam.group_by_unit``) and clipped to C, so adding or
  removing a prompt moves the sum by at most C; otherwise as DP-Adam.
* DP count (``dp_count``): N + N(0, sigma_c^2), sensitivity 1. Event: Gaussian(sigma_c). It only
  scales the DP-SGD updates and feeds the delta check; it never chooses q, T or sigma (that would be
  a fully adaptive composition, which the PLD bound does not cover).

Composition: every ledger entry names its private ``dataset`` and the ``partition`` it reads
(``composition``): mechanisms on the same records compose sequentially (``accounting``, PLD with an
opacus PRV cross-check; the budget is met by both), disjoint partitions of a dataset in parallel,
and different datasets have separate guarantees. The release's mechanisms (generator, histogram)
all read the same instructions. What
is computed from DP outputs and public data only (the pool, the clusters, the release) is
post-processing and costs nothing more; ``dpinstruct.tools.lineage`` checks on the DVC graph that nothing else
reaches a dp or public artifact, and ``dpinstruct.tools.bundle`` publishes only dp and public files.

Evidence beside the proofs: ``audit`` (the one-run lower bound of Steinke et al. 2023, run by
``dpinstruct audit`` on canaries, ``dpinstruct.tools.canary_audit``) and the memorisation gate (stage
``memorisation``).

Randomness: every DP random number (sampling, noise, DP-PPO's rollouts) comes from ``randomness``,
a secret key's keyed streams or the OS's CSPRNG; never from a seed an attacker can read. ONE
setting (``privacy.key_file`` / ``privacy.secure_mode``) reaches every DP stage of every dataset,
and ``account`` refuses a ledger that mixes modes. Each stream is bound to its run's whole run key
(``run_key``: the params, the digest of every input the stage reads, the code; the DP-SGD stages
also the machine, ``dpinstruct.io.fingerprint``, since ``bf16: auto`` and the kernels resolve by
device), so two runs share noise only when they are the same run. The ledger (``ledger``) records each mechanism's event,
rounded up, for ``account`` to compose.

Hyperparameters: the defaults of the DP stages are chosen on public proxies (``dpinstruct tune``;
docs/tuning.md), so their selection costs no privacy.

What the guarantee does NOT cover (stated, not hidden):

* Input validation. A run that stops with an error publishes nothing, and whether it stops can
  depend on the private file: a malformed row, a duplicate id, an IMDb id clash, a split that comes
  out empty (a file too small for ``prepare``'s shares). The operator sees the error, fixes the
  file, and the guarantee is about the file of the run that completes; "a release exists" is not
  itself protected. A well-formed file (unique ids) of a realistic size triggers none of them.
* The memorisation gate (stage ``memorisation``, off by default): when ``memorisation.max_release_matches`` is
  an int, it blocks a release by looking at the private split, a data-dependent choice that no ledger
  entry accounts; a release that passed it carries the DP guarantee of the mechanisms, but the
  decision to publish does not. Keep it off for a DP claim, or count it as the curator's review.
* Float stability of batched encoders. The histogram's embeddings and HH-RLHF's reward features
  are computed in padded batches; another row in a batch can change a row's vector in the last
  float bits (padding changes the kernels' blocking). Sensitivity is unaffected (each record still
  casts one vote, each pair one clipped gradient), but a neighbour's rows are not bit-identical
  elsewhere: the stability claims above are about which rows and texts reach a mechanism.
"""
