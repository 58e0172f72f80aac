"""DP training: the torch side of the DP-SGD mechanisms.

* ``mechanism``: ``DPSGDMechanism``, the one frame every DP-SGD stage runs (the generator of
  Algorithm 1, DP-SFT, DP-PPO, the DP reward model): plan -> keyed streams -> DP-Adam -> resumable
  steps -> the ledger entry written from the plan's DpEvent.
* ``dp_adam``: per-example clipping (opacus), noise once per logical step, Poisson sampling and
  micro-batching.
* ``dp_loop``: the resumable step loop (checkpoints, DVCLive curves, epsilon as it is spent).
* ``dp_generator``: Algorithm 1's training of the generator on a list of instructions.

The privacy math these build on (events, calibration, ledger, composition, randomness) lives in
``dpinstruct.privacy``, which imports no torch.
"""
