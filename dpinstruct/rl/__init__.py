"""DP alignment with reinforcement learning (Wu, Inan, Backurs, Chandrasekaran, Kulkarni, Sim,
ICLR 2024, "Privately Aligning Language Models with Reinforcement Learning"), task (i): continue
IMDb reviews positively, with no human in the loop (after Ziegler et al. 2020).

The recipe: DP-SFT of the policy on one part of the private reviews, then DP-PPO on another,
disjoint part, rewarded by a sentiment classifier trained on public reviews. The two DP steps touch
disjoint partitions (``data.private_parts``: one part per distinct review, by a seeded hash of its
cleaned text), so they compose in parallel (``dpinstruct.privacy.composition``).

Privacy units: for DP-SFT one review (its gradient clipped as one example); for DP-PPO one prompt,
i.e. one private review's opening: all the rollouts of a prompt, their policy loss included, form
ONE clipped example (``ppo``). Nothing else reads private prompts: there is no value head and no
reward normalisation across prompts; each prompt's baseline is the mean shaped reward of its own
rollouts, which is part of that prompt's clipped contribution.

Task (ii) and RLHF on the release (Yu et al. 2024, section 5): a Bradley-Terry reward model trained
under DP on private human preference pairs (dataset ``hh_rlhf``; the privacy unit is one
comparison: ``preferences``, ``preference_reward``, ``bradley_terry``), then PPO whose prompts are the
DP synthetic instructions (``rlhf``). Both inputs of that PPO are DP outputs, so it is
post-processing and needs no mechanism of its own; the same run on the real private instructions is
the non-private reference.
"""
