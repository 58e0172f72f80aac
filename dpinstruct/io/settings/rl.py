"""``rl``: DP alignment with RL on IMDb (Wu et al.), task (i): the data and its disjoint parts, the
public sentiment reward, DP-SFT, DP-PPO and their evaluation. ``sampling_rate``, ``steps`` and
``epochs_per_batch`` are checked by the accountant; ``rl.privacy`` is a ``Budget``."""
from pydantic import model_validator

from dpinstruct.io.errors import ConfigError
from dpinstruct.io.settings.base import PATH, Float, Int, Params, Section, one_of
from dpinstruct.io.settings.models import Lora
from dpinstruct.io.settings.privacy import Budget


class Partitions(Section):
    """Shares of the private reviews in each disjoint part, summing to 1."""
    KEY = "rl.data.partitions"
    sft: Float(gt=0)
    ppo: Float(gt=0)

    @model_validator(mode="after")
    def _sum(self):
        if abs(self.sft + self.ppo - 1) > 1e-9:
            raise ConfigError(self.KEY, f"need positive shares of sft and ppo summing to 1, got {self.shares()}")
        return self

    def shares(self) -> dict[str, float]:
        """{part: share} in the order params.yaml lists them: the cut of [0, 1) follows that order."""
        return {part: getattr(self, part) for part in (self.raw or type(self).model_fields)}


class RlData(Section):
    KEY = "rl.data"
    private_path: PATH               # PRIVATE: the aclImdb train split
    public_path: PATH                # public: reward classifier and evaluation prompts
    partitions: Partitions
    partition_seed: Int(ge=0)
    reward_share: Float(gt=0, lt=1)  # of the public reviews: the reward classifier's part
    public_seed: Int(ge=0)
    min_tokens: Int(ge=1)            # shorter reviews are dropped
    prompt_tokens: Int(ge=1)         # a prompt is a review's first tokens
    sft_tokens: Int(ge=1)

    @model_validator(mode="after")
    def _prompt_fits(self):
        if self.min_tokens < self.prompt_tokens:
            raise ConfigError("rl.data", f"need min_tokens >= prompt_tokens >= 1, got {self.min_tokens}, "
                                         f"{self.prompt_tokens}")
        return self


class SentimentReward(Section):
    KEY = "rl.sentiment_reward"
    rows: Int(ge=1)
    heldout: Int(ge=1)
    min_df: Int(ge=1)
    snippet_words: Int(ge=1)
    c: Float(gt=0)
    seed: Int(ge=0)


class DpSft(Section):
    KEY = "rl.dp_sft"
    sampling_rate: Float()
    steps: Int(ge=None)
    clip_norm: Float(gt=0)
    lr: Float(gt=0)
    lora: Lora
    micro_batch_tokens: Int(ge=1)
    checkpoint_every: Int(ge=1)
    seed: Int(ge=0)                  # LoRA init only


class PPO(Section):
    """What a PPO step uses (``ppo.PPOSettings``), shared by DP-PPO and RLHF-PPO."""
    rollouts: Int(ge=2)              # continuations per prompt: the baseline is their mean
    new_tokens: Int(ge=1)
    temperature: Float(gt=0)
    top_p: Float(gt=0, le=1)
    kl_coef: Float(ge=0)             # KL penalty to the reference
    clip_range: Float(gt=0)
    lr: Float(gt=0)
    lora: Lora
    seed: Int(ge=0)


class DpPpo(PPO):
    KEY = "rl.dp_ppo"
    partition: one_of("sft", "ppo")  # ppo: disjoint from DP-SFT (parallel); sft: composes with it
    sampling_rate: Float()
    steps: Int(ge=None)
    epochs_per_batch: Int(ge=None)   # PPO epochs on each sampled batch (> 1 is accounted)
    clip_norm: Float(gt=0)
    prompts_per_micro: Int(ge=1)
    checkpoint_every: Int(ge=1)


class EvaluateRl(Section):
    KEY = "rl.evaluate_rl"
    rows: Int(ge=1)
    bootstrap: Int(ge=1)
    seed: Int(ge=0)


class Rl(Params):
    privacy: Budget
    data: RlData
    sentiment_reward: SentimentReward
    dp_sft: DpSft
    dp_ppo: DpPpo
    evaluate_rl: EvaluateRl
