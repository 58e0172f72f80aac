"""Privacy accounting of a release: the DP events of each stage and their composition.

Semantics (the same for every stage, and written into each ledger entry):

* Neighbouring relation: add-or-remove one record, a record being one private TRAIN instruction
  (record-level DP; `user_id` is kept for a later user-level mode).
* DP-SGD / DP-Adam (Algorithm 1): T steps; at each step every record is included independently
  with probability q (Poisson sampling); each included record's gradient is clipped to L2 norm C;
  Gaussian noise of std sigma*C is added to the sum. Event: T-fold self-composition of
  PoissonSampled(q, Gaussian(sigma)), sigma being the noise multiplier (noise std / sensitivity C).
* DP histogram (Algorithm 2): every record adds 1 to exactly one bin, so the L2 sensitivity under
  add/remove-one is 1; i.i.d. Gaussian noise of std sigma_h per bin. Event: Gaussian(sigma_h / 1).
* A release is the composition of all events above (sequential composition on the same records).

Epsilon comes from dp_accounting's PLD accountant (tight, an upper bound up to its discretisation,
which is pessimistic by construction) and is cross-checked with opacus' PRV accountant. RDP would
over-state epsilon by about 0.7 at the paper's setting, so it is not used.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant

from stages.errors import PrivacyConfigError

NEIGHBOURING = "add_or_remove_one"
# PLD discretisation: 1e-4 is dp_accounting's default; finer costs time for no visible change.
PLD_DISCRETISATION = 1e-4


def dp_sgd_event(noise_multiplier: float, sampling_rate: float, steps: int) -> dp_accounting.DpEvent:
    """T Poisson-subsampled Gaussian steps (noise multiplier = noise std / clip norm)."""
    if noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    step = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
    return dp_accounting.SelfComposedDpEvent(step, steps)


def histogram_event(sigma: float, sensitivity: float = 1.0) -> dp_accounting.DpEvent:
    """One Gaussian histogram release with L2 sensitivity `sensitivity` and noise std `sigma`."""
    if sigma == 0:
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.GaussianDpEvent(sigma / sensitivity)


def epsilon_pld(events: list[dp_accounting.DpEvent], delta: float, discretisation: float = PLD_DISCRETISATION) -> float:
    """Epsilon of the composition of `events` at `delta` (inf when any event is non-private)."""
    if any(isinstance(e, dp_accounting.NonPrivateDpEvent) for e in events):
        return math.inf
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=discretisation)
    accountant.compose(dp_accounting.ComposedDpEvent(list(events)))
    return float(accountant.get_epsilon(delta))


def epsilon_prv(components: list[tuple[float, float, int]], delta: float) -> float:
    """Cross-check with opacus' PRV accountant; components are (noise_multiplier, sampling_rate, steps).
    A Gaussian mechanism without sampling is the component (sigma, 1.0, 1)."""
    from opacus.accountants import PRVAccountant

    if any(sigma == 0 for sigma, _, _ in components):
        return math.inf  # PRV overflows at zero noise; a non-private step has no finite epsilon
    accountant = PRVAccountant()
    accountant.history = [(float(s), float(q), int(t)) for s, q, t in components]
    with warnings.catch_warnings():  # benign log(0) and RDP-order warnings of its domain search
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(accountant.get_epsilon(delta=delta, eps_error=0.01))


class RunningEpsilon:
    """Epsilon spent after each DP-SGD step, composed incrementally (one PLD convolution per step
    instead of recomposing all t steps from scratch, which at T=439 would cost minutes)."""

    def __init__(self, noise_multiplier: float, sampling_rate: float, delta: float, steps_done: int = 0):
        self.delta, self.private = delta, noise_multiplier > 0
        if self.private:
            self.step_event = dp_accounting.PoissonSampledDpEvent(sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier))
            self.accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETISATION)
            if steps_done:
                self.accountant.compose(self.step_event, steps_done)

    def step(self) -> float:
        if not self.private:
            return math.inf
        self.accountant.compose(self.step_event)
        return float(self.accountant.get_epsilon(self.delta))


def check_delta(delta: float, n_records: int) -> None:
    if not 0 < delta < 1 / n_records:
        raise PrivacyConfigError(
            f"privacy.delta={delta} must be in (0, 1/N) = (0, {1 / n_records:.3g}) for N={n_records} records: "
            "a delta of 1/N or more allows releasing one record in the clear")


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sampling_rate: float, steps: int,
                               histogram_sigma: float, tolerance: float = 0.01) -> tuple[float, float]:
    """Smallest DP-SGD noise multiplier whose composition with the histogram meets `target_epsilon`.

    Returns (noise_multiplier, composed_epsilon) with composed <= target (to within the bisection
    tolerance below it). The search uses a 10x coarser PLD grid, which is faster and, being
    pessimistic, never under-states epsilon; the returned epsilon is recomputed on the fine grid.
    Raises PrivacyConfigError when no noise level meets the target (the histogram alone spends it).
    """
    hist = histogram_event(histogram_sigma)

    def composed(sigma: float, grid: float = 10 * PLD_DISCRETISATION) -> float:
        return epsilon_pld([dp_sgd_event(sigma, sampling_rate, steps), hist], delta, grid)

    floor = epsilon_pld([hist], delta)
    if floor >= target_epsilon:
        raise PrivacyConfigError(
            f"privacy.epsilon={target_epsilon} cannot be met: the histogram alone (histogram.sigma="
            f"{histogram_sigma}) spends epsilon {floor:.3f} at delta {delta}; raise histogram.sigma or epsilon")
    # Bracket [lo, hi] with eps(lo) > target >= eps(hi); epsilon decreases monotonically in sigma.
    # Small sigmas make slow PLDs, so walk down from 1 rather than up from near 0.
    lo, hi = 1.0, 1.0
    if composed(1.0) > target_epsilon:
        while composed(hi) > target_epsilon:
            lo, hi = hi, hi * 2
            if hi > 1e4:
                raise PrivacyConfigError(f"privacy.epsilon={target_epsilon} needs a noise multiplier above 1e4")
    else:
        while composed(lo) <= target_epsilon:
            lo, hi = lo / 2, lo
    eps_hi = composed(hi)
    while target_epsilon - eps_hi > tolerance and (hi - lo) / hi > 1e-4:
        mid = (lo + hi) / 2
        eps_mid = composed(mid)
        if eps_mid <= target_epsilon:
            hi, eps_hi = mid, eps_mid
        else:
            lo = mid
    return hi, composed(hi, PLD_DISCRETISATION)


@dataclass(frozen=True)
class GeneratorPlan:
    """The generator's DP-SGD settings, fixed before training so that the release meets its budget."""
    private: bool
    noise_multiplier: float
    clip_norm: float
    sampling_rate: float
    steps: int
    expected_batch_size: float
    delta: float
    target_epsilon: float
    histogram_sigma: float
    composed_epsilon: float       # PLD, generator + histogram
    composed_epsilon_prv: float   # opacus PRV cross-check of the same composition

    def as_dict(self) -> dict:
        return asdict(self)


def required_params(privacy: dict | None, histogram: dict | None) -> tuple[float, float, float]:
    """(privacy.epsilon, privacy.delta, histogram.sigma) as floats; refuses a missing one."""
    from stages.params import as_float

    for section, key, cfg in (("privacy", "epsilon", privacy), ("privacy", "delta", privacy), ("histogram", "sigma", histogram)):
        if cfg is None or cfg.get(key) is None:
            raise PrivacyConfigError(f"params.yaml must set {section}.{key} (use privacy.epsilon: .inf for a non-private run)")
    return as_float(privacy["epsilon"]), as_float(privacy["delta"]), as_float(histogram["sigma"])


def histogram_noise(privacy: dict | None, histogram: dict | None, n_records: int) -> float:
    """Noise std of the DP histogram: histogram.sigma in a private run (refusing delta >= 1/N and
    sigma <= 0), 0 in a non-private one (privacy.epsilon: .inf)."""
    epsilon, delta, sigma = required_params(privacy, histogram)
    if math.isinf(epsilon):
        return 0.0
    check_delta(delta, n_records)
    if not sigma > 0:
        raise PrivacyConfigError("histogram.sigma must be > 0 in a private run (privacy.epsilon is finite)")
    return sigma


def plan_generator(privacy: dict, histogram: dict, *, n_records: int, batch_size: float, epochs: float,
                   clip_norm: float) -> GeneratorPlan:
    """Budget first: calibrate the generator's noise so the COMPOSED release epsilon meets the target.

    Refuses (PrivacyConfigError) a missing privacy param, delta >= 1/N, a batch larger than N, a
    histogram without noise in a private run, and a budget that no noise level can meet.
    """
    epsilon, delta, _ = required_params(privacy, histogram)
    if not 0 < batch_size <= n_records:
        raise PrivacyConfigError(f"expected batch size {batch_size} must be in (0, N={n_records}]")
    if epochs <= 0 or epsilon <= 0:
        raise PrivacyConfigError(f"epochs ({epochs}) and privacy.epsilon ({epsilon}) must be positive")
    q = batch_size / n_records
    steps = max(1, round(epochs / q))
    if math.isinf(epsilon):
        return GeneratorPlan(False, 0.0, math.inf, q, steps, batch_size, delta, epsilon, 0.0, math.inf, math.inf)
    hist_sigma = histogram_noise(privacy, histogram, n_records)
    sigma, composed = calibrate_noise_multiplier(epsilon, delta, q, steps, hist_sigma)
    composed_prv = epsilon_prv([(sigma, q, steps), (hist_sigma, 1.0, 1)], delta)
    return GeneratorPlan(True, sigma, clip_norm, q, steps, batch_size, delta, epsilon, hist_sigma, composed, composed_prv)
