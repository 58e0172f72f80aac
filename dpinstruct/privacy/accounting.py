"""Privacy accounting of a release: the DP events of each mechanism, their composition and the
calibration of the generator's noise to a composed budget.

The semantics (neighbouring relation, sensitivities, sampling, composition) are stated once in the
package docstring (``dpinstruct.privacy``). Epsilon comes from dp_accounting's PLD accountant
(tight, an upper bound up to its discretisation, which is pessimistic by construction) and is
cross-checked with opacus' PRV accountant; calibration meets the target by both. RDP would
over-state epsilon by about 0.7 at the paper's setting, so it is not used.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass

import dp_accounting
from dp_accounting.pld import pld_privacy_accountant

from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.io.settings.privacy import Budget, Histogram

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


# Accountants are pure functions of their arguments and cost up to seconds each; one process (a
# calibration's search, account composing every partition, the audit, the tests) often asks the
# same question again.
_ANSWERS: dict = {}


def _remember(key: tuple, value: float) -> None:
    if len(_ANSWERS) >= 4096:
        _ANSWERS.clear()
    _ANSWERS[key] = value


def epsilon_pld(events: list[dp_accounting.DpEvent], delta: float, discretisation: float = PLD_DISCRETISATION) -> float:
    """Epsilon of the composition of `events` at `delta` (inf when any event is non-private)."""
    if any(isinstance(e, dp_accounting.NonPrivateDpEvent) for e in events):
        return math.inf
    # An event's repr states every field (floats round-trip), so it keys the answer exactly.
    key = ("pld", repr(list(events)), float(delta), float(discretisation))
    if key not in _ANSWERS:
        accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=discretisation)
        accountant.compose(dp_accounting.ComposedDpEvent(list(events)))
        _remember(key, float(accountant.get_epsilon(delta)))
    return _ANSWERS[key]


class EpsilonCurve:
    """Epsilon after t of the T steps of ``dp_sgd_event(noise_multiplier, sampling_rate, T)``, for a
    stage's training curve. The same dp_accounting operations as ``epsilon_pld`` of that event (so
    the same numbers, bit for bit), but the one-step PLD, which costs about 1 s, is built once per
    run instead of once per logged point; composing it t times is the cheap part."""

    def __init__(self, noise_multiplier: float, sampling_rate: float, delta: float,
                 discretisation: float = PLD_DISCRETISATION):
        self._discretisation, self._delta = discretisation, delta
        self._step = _subsampled_gaussian_pld(float(noise_multiplier), float(sampling_rate), discretisation)

    def __call__(self, steps: int) -> float:
        from dp_accounting.pld import privacy_loss_distribution as pld

        composed = pld.identity(value_discretization_interval=self._discretisation)
        return float(composed.compose(self._step.self_compose(steps)).get_epsilon_for_delta(self._delta))


@functools.lru_cache(maxsize=8)
def _subsampled_gaussian_pld(noise_multiplier: float, sampling_rate: float, discretisation: float):
    """dp_accounting's PLD of one Poisson-subsampled Gaussian step, as its PLDAccountant builds it
    (immutable: composing it returns new objects)."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    return pld.from_gaussian_mechanism(
        standard_deviation=noise_multiplier, value_discretization_interval=discretisation,
        sampling_prob=sampling_rate, neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)


def epsilon_prv(components: list[tuple[float, float, int]], delta: float) -> float:
    """Cross-check with opacus' PRV accountant; components are (noise_multiplier, sampling_rate, steps).
    A Gaussian mechanism without sampling is the component (sigma, 1.0, 1)."""
    from opacus.accountants import PRVAccountant

    if any(sigma == 0 for sigma, _, _ in components):
        return math.inf  # PRV overflows at zero noise; a non-private step has no finite epsilon
    history = [(float(s), float(q), int(t)) for s, q, t in components]
    key = ("prv", repr(history), float(delta))
    if key not in _ANSWERS:
        accountant = PRVAccountant()
        accountant.history = history
        with warnings.catch_warnings():  # benign log(0) and RDP-order warnings of its domain search
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            _remember(key, float(accountant.get_epsilon(delta=delta, eps_error=0.01)))
    return _ANSWERS[key]


def prv_components(event: dp_accounting.DpEvent) -> list[Component] | None:
    """The components (sigma, q, T) of opacus' PRV accountant that make up ``event``, or None when
    it holds a mechanism that accountant does not model (the PRV cross-check is then skipped and the
    ledger says so). A non-private event is the component (0, 1, 1): its epsilon is infinite."""
    if isinstance(event, dp_accounting.NonPrivateDpEvent):
        return [(0.0, 1.0, 1)]
    if isinstance(event, dp_accounting.GaussianDpEvent):
        return [(float(event.noise_multiplier), 1.0, 1)]
    if isinstance(event, dp_accounting.PoissonSampledDpEvent) and \
            isinstance(event.event, dp_accounting.GaussianDpEvent):
        return [(float(event.event.noise_multiplier), float(event.sampling_probability), 1)]
    if isinstance(event, dp_accounting.SelfComposedDpEvent):
        inner = prv_components(event.event)
        if inner is None or len(inner) != 1:
            return None if inner is None else inner * int(event.count)
        sigma, q, steps = inner[0]
        return [(sigma, q, steps * int(event.count))]
    if isinstance(event, dp_accounting.ComposedDpEvent):
        parts = [prv_components(e) for e in event.events]
        return None if any(p is None for p in parts) else [c for p in parts for c in p]
    return None


def epsilon_prv_of(events: list[dp_accounting.DpEvent], delta: float) -> float | None:
    """PRV epsilon of the composition of ``events``, or None where opacus' PRV does not model one."""
    parts = [prv_components(e) for e in events]
    return None if any(p is None for p in parts) else epsilon_prv([c for p in parts for c in p], delta)


def check_delta(delta: float, n_records: float, name: str = "privacy.delta") -> None:
    """Refuses delta >= 1/N; N is the DP count N~ (``dp_count``), so that no decision of the
    pipeline, a refusal included, depends on an exact private count."""
    n_records = max(float(n_records), 1.0)
    if not 0 < delta < 1 / n_records:
        raise PrivacyConfigError(
            f"{name}={delta} must be in (0, 1/N) = (0, {1 / n_records:.3g}) for the DP count N~={n_records:.1f} of "
            "the records: a delta of 1/N or more allows releasing one record in the clear")


def round_up(epsilon: float, places: int = 9) -> float:
    """Epsilon rounded UP at 1e-9: accountants' last digits follow the CPU's float kernels, and a
    ledger must never state less than was computed."""
    return epsilon if not math.isfinite(epsilon) else math.ceil(epsilon * 10 ** places) / 10 ** places


Component = tuple  # (noise multiplier, sampling rate, steps): one mechanism, as opacus' PRV history has it


def component_event(noise_multiplier: float, sampling_rate: float, steps: int) -> dp_accounting.DpEvent:
    """The DpEvent of a component: T Poisson-subsampled Gaussian steps, or T plain Gaussian
    releases when the sampling rate is 1 (one step: the histogram)."""
    if sampling_rate < 1:
        return dp_sgd_event(noise_multiplier, sampling_rate, steps)
    single = histogram_event(noise_multiplier)
    return single if steps == 1 or isinstance(single, dp_accounting.NonPrivateDpEvent) else \
        dp_accounting.SelfComposedDpEvent(single, steps)


def composed_epsilons(components: list[Component], delta: float) -> tuple[float, float]:
    """(PLD, PRV) epsilon of the sequential composition of ``components``."""
    pld = epsilon_pld([component_event(*c) for c in components], delta)
    return pld, epsilon_prv(list(components), delta)


class WorstOfPLDAndPRV(dp_accounting.PrivacyAccountant):
    """A dp_accounting accountant whose epsilon is the larger of dp_accounting's PLD and opacus'
    PRV epsilon of what it composed: calibrating against it meets a target by BOTH accountants (PRV
    sits about 0.01 above PLD at the shipped setting). It supports the events both model: Gaussian,
    Poisson-subsampled Gaussian, and their (self-)compositions."""

    def __init__(self):
        super().__init__(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
        self._events: list[dp_accounting.DpEvent] = []

    def _maybe_compose(self, event, count, do_compose):
        if prv_components(event) is None:
            return self.CompositionErrorDetails(event, "not modelled by opacus' PRV accountant")
        if do_compose:
            self._events += [event] * count
        return None

    def get_epsilon(self, target_delta: float) -> float:
        return max(epsilon_pld(self._events, target_delta), epsilon_prv_of(self._events, target_delta))


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sampling_rate: float, steps: int,
                               prior: list[Component], *, prior_label: str = "the other mechanisms on these records",
                               hint: str = "", target_name: str = "privacy.epsilon",
                               tolerance: float = 1e-3) -> tuple[float, float, float]:
    """Smallest DP-SGD noise multiplier whose composition with the ``prior`` components (the other
    mechanisms on the same records: for the generator, the histogram) meets `target_epsilon` by
    BOTH accountants: ``dp_accounting.mechanism_calibration.calibrate_dp_mechanism`` (a bracket
    search, Brent's method, then a check that the answer is on the safe side), first against a
    coarse PLD, then against ``WorstOfPLDAndPRV``; `tolerance` is relative, in sigma.

    Returns (noise_multiplier, PLD epsilon, PRV epsilon), both <= target.
    Raises PrivacyConfigError when no noise level meets the target (the prior alone spends it).
    """
    from dp_accounting import mechanism_calibration

    prior_events = [component_event(*c) for c in prior]
    floor = epsilon_pld(prior_events, delta) if prior_events else 0.0
    if floor >= target_epsilon:
        raise PrivacyConfigError(
            f"{target_name}={target_epsilon} cannot be met: {prior_label} alone spend(s) epsilon {floor:.3f} at "
            f"delta {delta}{hint}")

    def event(sigma: float) -> dp_accounting.DpEvent:
        return dp_accounting.ComposedDpEvent([dp_sgd_event(sigma, sampling_rate, steps), *prior_events])

    def coarse():  # a 10x coarser PLD grid: ~10x faster and pessimistic, never below the fine one
        return pld_privacy_accountant.PLDAccountant(value_discretization_interval=10 * PLD_DISCRETISATION)

    # Small sigmas make slow PLDs and a zero sigma has no finite epsilon: the search starts at sigma 1
    # and halves only while sigma 1 already meets the target.
    lower = 1.0
    while coarse().compose(event(lower)).get_epsilon(delta) <= target_epsilon:
        lower /= 2
    try:
        # first on the coarse grid, then on both accountants from just below that answer, so that the
        # slow evaluations (~2 s each) only close a narrow bracket
        rough = mechanism_calibration.calibrate_dp_mechanism(
            coarse, event, target_epsilon, delta,
            bracket_interval=mechanism_calibration.LowerEndpointAndGuess(lower, 2 * lower), tol=tolerance * lower)
        below = 0.97 * rough
        if WorstOfPLDAndPRV().compose(event(below)).get_epsilon(delta) <= target_epsilon:
            below = lower  # the coarse grid was more than 3% pessimistic: search the whole bracket
        sigma = mechanism_calibration.calibrate_dp_mechanism(
            WorstOfPLDAndPRV, event, target_epsilon, delta,
            bracket_interval=mechanism_calibration.LowerEndpointAndGuess(below, rough), tol=tolerance * below)
    except mechanism_calibration.NoBracketIntervalFoundError as e:
        raise PrivacyConfigError(f"{target_name}={target_epsilon} needs a noise multiplier beyond any searched") from e
    pld, prv = composed_epsilons([(sigma, sampling_rate, steps), *prior], delta)
    return float(sigma), pld, prv


def required_params(privacy: Budget, histogram: Histogram) -> tuple[float, float, float]:
    """(privacy.epsilon, privacy.delta, histogram.sigma): typed params, checked when read."""
    return privacy.epsilon, privacy.delta, histogram.sigma


def histogram_noise(privacy: Budget, histogram: Histogram, n_records: float) -> float:
    """Noise std of the DP histogram: histogram.sigma in a private run (refusing delta >= 1/N~ and
    sigma <= 0), 0 in a non-private one (privacy.epsilon: .inf)."""
    epsilon, delta, sigma = required_params(privacy, histogram)
    if math.isinf(epsilon):
        return 0.0
    check_delta(delta, n_records)
    if not sigma > 0:
        raise PrivacyConfigError("histogram.sigma must be > 0 in a private run (privacy.epsilon is finite)")
    return sigma


def divisor(sampling_rate: float, noisy_count: float) -> float:
    """The public divisor of a step's noisy gradient sum: q x N~, the expected batch by the DP count
    N~ of the records (``dp_count``), never by N itself (a ratio of published numbers would give N)."""
    return sampling_rate * max(float(noisy_count), 1.0)


def plan_generator(privacy: Budget, histogram: Histogram, *, noisy_count: float, prior: list[Component],
                   sampling_rate: float, epochs: float, clip_norm: float) -> DPSGDPlan:
    """Budget first for Algorithm 1: the generator's plan, T = round(epochs / q) steps, calibrated so
    that the COMPOSED release (with the ``prior``: the histogram of Algorithm 2 and the DP count)
    meets ``privacy``. Refuses, besides ``plan_dp_sgd``'s cases, a histogram without noise in a
    private run and non-positive epochs."""
    epsilon, _, _ = required_params(privacy, histogram)
    if not epochs > 0:
        raise PrivacyConfigError(f"train_generator.epochs={epochs} must be positive")
    if not 0 < sampling_rate <= 1:
        raise PrivacyConfigError(f"train_generator.sampling_rate={sampling_rate} must be in (0, 1]")
    hist_sigma = histogram_noise(privacy, histogram, noisy_count)
    return plan_dp_sgd(privacy, budget_name="privacy", section="train_generator", noisy_count=noisy_count,
                       sampling_rate=sampling_rate, steps=max(1, round(epochs / sampling_rate)), clip_norm=clip_norm,
                       prior=prior, prior_label=f"the histogram (histogram.sigma={hist_sigma}) and the DP count",
                       hint="; raise histogram.sigma, dp_count.sigma or privacy.epsilon")


@dataclass(frozen=True)
class DPSGDPlan:
    """A DP-SGD mechanism's settings (the generator, DP-SFT, DP-PPO, the reward model), fixed before
    training from params and the DP count alone, to meet its budget.

    ``noise_multiplier`` is per gradient step. A sampled batch used for ``epochs_per_batch``
    gradient steps (PPO epochs) is ``epochs_per_batch`` Gaussian mechanisms on one Poisson sample,
    i.e. one Gaussian of multiplier ``noise_multiplier / sqrt(epochs_per_batch)``: the
    ``effective_noise_multiplier`` the ledger and the accountants use.
    """
    private: bool
    noise_multiplier: float
    clip_norm: float
    sampling_rate: float
    steps: int
    epochs_per_batch: int
    expected_batch_size: float
    delta: float
    target_epsilon: float
    composed_epsilon: float       # PLD, with the prior mechanisms on the same records
    composed_epsilon_prv: float

    @property
    def effective_noise_multiplier(self) -> float:
        return self.noise_multiplier / math.sqrt(self.epochs_per_batch)

    def event(self) -> dp_accounting.DpEvent:
        """The mechanism's DpEvent: what its ledger entry stores and ``account`` composes."""
        return dp_sgd_event(self.effective_noise_multiplier, self.sampling_rate, self.steps)

    def describe(self) -> str:
        return (f"q={self.sampling_rate:.4g} T={self.steps} sigma={self.noise_multiplier:.4f}"
                + (f" (x{self.epochs_per_batch} epochs)" if self.epochs_per_batch != 1 else "")
                + f" C={self.clip_norm} -> epsilon {self.composed_epsilon:.3f} (PLD), {self.composed_epsilon_prv:.3f} "
                  f"(PRV) at delta {self.delta:g}, with the mechanisms before it on these records")

    def as_dict(self) -> dict:
        return asdict(self)


def plan_dp_sgd(budget: Budget, *, budget_name: str, noisy_count: float, sampling_rate: float, steps: int,
                clip_norm: float, epochs_per_batch: int = 1, prior: list[Component] = (),
                prior_label: str = "the mechanisms before it on these records", section: str = "",
                hint: str = "") -> DPSGDPlan:
    """Budget first for a DP-SGD stage: calibrate its noise so that it and the ``prior``
    components on the same records (its DP count, and e.g. DP-SFT when DP-PPO reads the same part)
    meet ``budget`` (epsilon, delta) by both accountants. ``noisy_count`` (the DP count N~) gives
    the divisor q x N~ and the delta < 1/N~ refusal. Refuses delta >= 1/N~, q outside (0, 1],
    non-positive steps or epochs, and a budget the prior alone spends."""
    epsilon, delta = budget.epsilon, budget.delta
    if not 0 < sampling_rate <= 1:
        raise PrivacyConfigError(f"{section + '.' if section else ''}sampling_rate={sampling_rate} must be in (0, 1]")
    if steps < 1 or epochs_per_batch < 1 or epsilon <= 0:
        raise PrivacyConfigError(f"steps ({steps}), epochs_per_batch ({epochs_per_batch}) and {budget_name}.epsilon "
                                 f"({epsilon}) must be positive")
    batch = divisor(sampling_rate, noisy_count)
    if math.isinf(epsilon):
        return DPSGDPlan(False, 0.0, math.inf, sampling_rate, steps, epochs_per_batch, batch, delta,
                         epsilon, math.inf, math.inf)
    check_delta(delta, noisy_count, f"{budget_name}.delta")
    effective, composed, composed_prv = calibrate_noise_multiplier(
        epsilon, delta, sampling_rate, steps, list(prior), prior_label=prior_label, hint=hint,
        target_name=f"{budget_name}.epsilon")
    return DPSGDPlan(True, effective * math.sqrt(epochs_per_batch), clip_norm, sampling_rate, steps, epochs_per_batch,
                     batch, delta, epsilon, round_up(composed), round_up(composed_prv))
