"""TrainConfig: the typed schema of `configs/train/*.yaml`.

Defaults follow what the released KDSR code does (docs/METHOD.md, "Where this code differs from the released
code"), except where a comment labels the difference: the fused rows also score the candidates
(`model.score_items`), distillation weights 1 / 1 (the released run: text 0.5, image 4) and gradient clipping at
norm 5 (the released code has none; `optim.clip_norm: null`). Every epoch records how many steps clipping
shrank (`clipped` in metrics.json's valid_history)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from kdsr.config import Config


class ModelConfig(Config):
    backbone: Literal["sasrec", "gru4rec", "bert4rec", "graph"] = "sasrec"
    hidden: int = Field(128, gt=0)  # embedding size of the released run
    n_layers: int = Field(2, gt=0)
    n_heads: int = Field(2, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    max_len: int = Field(50, gt=1)  # histories are truncated to their last max_len items
    mask_prob: float = Field(0.2, gt=0, lt=1)  # BERT4Rec cloze masking ratio (RecBole's default)
    # How modality tables V^m join the ID embedding: sum of projections, concatenation + projection, or the
    # paper's learned softmax gate over [ID, V^1, ...]. Ignored when there are no modalities.
    fusion: Literal["sum", "concat", "gate"] = "gate"
    # Which item representations score the candidates: "fused", the same fused rows the backbone reads (the
    # features shape the ranking and every step's softmax moves every V^m row); "id", the ID embeddings alone,
    # as the released code has it (docs/METHOD.md, "Where this code differs from the released code"): the
    # features reach the ranking only through the input side.
    score_items: Literal["fused", "id"] = "fused"
    # How the stored features are scaled before they initialise V^m, the same for every arm that reads them
    # (the teacher's targets are cosines of the stored features and do not change): "none" keeps the encoder's
    # scale (MiniLM rows are unit-norm, so PCA dims have std ~0.07; imported CLIP features ~0.4), "l2" makes
    # every row unit-norm, "standardize" gives every dimension mean 0 and std 1 over the catalog's items.
    feature_scaling: Literal["none", "l2", "standardize"] = "none"


class ModalityConfig(Config):
    name: str  # "text", "image", ...
    # A dissection output (a FeatureStore of reduced features + facets/codebook). Its rows initialise V^m
    # and its teacher gives the correlation targets.
    features: str
    # Term weights; 0 switches a term off for this modality. The released run weights text by 0.5 and image by 4
    # (both terms); 1 / 1 here is ours, labelled.
    weight_hol: float = Field(1.0, ge=0)
    weight_code: float = Field(1.0, ge=0)


class DistillConfig(Config):
    enabled: bool = True  # False: features are fused but never supervised (the two-stage baseline)
    tau: float = Field(1.5, gt=0)
    holistic: Literal["frobenius", "kl"] = "frobenius"
    proj_dim: int = Field(128, gt=0)  # width of h' = W2(W1 V)
    # The holistic term's mean: "batch" divides by all B sequences of the batch, as the paper and the released code
    # do (a sequence with no pair adds 0); "sequences_with_pairs" divides by those with a pair (ours, labelled).
    holistic_mean: Literal["batch", "sequences_with_pairs"] = "batch"
    # Pairs over a sequence's unique items (a repeated item is one node, as in the released code); false: every
    # position is a node, so a repeated item's pairs count once per repetition (ours, labelled).
    unique_items: bool = True
    # Ours, labelled (variants to try where distillation trails the fused baseline):
    # the distillation weights fall linearly to 0 over the first `fade_epochs` epochs (epoch e is weighted
    # max(0, 1 - e / fade_epochs)): the correlations guide the start, then the tables adapt freely; null:
    # constant weights, as the paper.
    fade_epochs: int | None = Field(None, gt=0)
    # The same holistic and code terms (same teacher, same weights, own heads) also supervise the ID
    # embeddings, the table that scores the candidates under `model.score_items: id`.
    onto_id: bool = False


class AsyncStepConfig(Config):
    """The modality tables' slow rate: lr / gamma^len(milestones), constant, as the released code sets it (its
    schedule [5, 10] with gamma 2: lr / 4)."""

    enabled: bool = True  # False: the modality tables learn at the full lr
    gamma: float = Field(2.0, gt=0)
    milestones: list[int] = [5, 10]  # the released `schedule`; only its length sets the rate unless ramp
    # Ours, labelled: multiply the slow rate by gamma at each milestone epoch (0-based), back up to the full lr,
    # as a comment in the released config suggests but its code never does.
    ramp: bool = False


class SampledSoftmaxConfig(Config):
    """`optim.loss: sampled_softmax`: the next-item softmax over the target and a shared set of negatives."""

    # Negatives drawn per step, shared by every position of the batch (with replacement); at most N.
    # None: min(1024, N).
    n_negatives: int | None = Field(None, gt=0)
    # The proposal q_j ~ (count_j + 1)^exponent over training targets: 0 = uniform, 1 = popularity.
    popularity_exponent: float = Field(0.0, ge=0)
    in_batch: bool = False  # also use the batch's own targets as negatives for every position
    logq_correction: bool = True  # subtract log(expected count) of each candidate (trainer/sampling.py)


class OptimConfig(Config):
    lr: float = Field(1e-3, gt=0)
    # Adam weight decay of the dense parameters; the item tables get none when their gradients are sparse.
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, gt=0)  # per process, per micro-batch
    grad_accum: int = Field(1, gt=0)
    clip_norm: float | None = Field(5.0, gt=0)  # total-norm clipping (ours); None: none, as the released code
    # ce: the exact full softmax over all N items (every step costs O(N)); sampled_softmax: the target
    # against shared sampled negatives with logQ correction (a step's cost does not grow with N); bce: BCE
    # against n_negatives uniform negatives per position, no correction.
    loss: Literal["ce", "bce", "sampled_softmax"] = "ce"
    n_negatives: int = Field(1, gt=0)  # per position, for loss: bce
    sampled: SampledSoftmaxConfig = SampledSoftmaxConfig()
    # Sparse gradients for the (N + 1)-row tables (ID embeddings, V^m), updated by a lazy Adam that touches
    # only the rows a step used: dense Adam walks all N rows every step. None (auto): sparse with
    # bce / sampled_softmax (the row-lookup losses) in one process; dense with ce, and under several processes
    # (DDP cannot reduce sparse gradients). See bench/results/scale.md.
    sparse_tables: bool | None = None

    @property
    def row_lookup(self) -> bool:
        """True when a step looks up only the rows it needs (no full fused table)."""
        return self.loss != "ce"


class EvalConfig(Config):
    ks: list[int] = [5, 10, 20, 50]
    exclude_history: bool = False  # RecBole's default for sequential models: history items stay candidates
    sampled_negatives: int | None = Field(None, gt=0)  # labelled, not the default (Krichene & Rendle 2020)
    batch_size: int = Field(512, gt=0)
    # Items scored at a time in the exact full ranking: memory O(batch_size x item_chunk), whatever N.
    item_chunk: int = Field(65536, ge=1)
    # Evaluate a seeded random sample of this many users per split instead of all (labelled in metrics.json;
    # for very large user sets, e.g. the scale benchmark). None: every user.
    sample_users: int | None = Field(None, ge=1)
    # Evaluate the test split once after training, with the selected checkpoint. false: test is left unread
    # (a sweep reads it only for the configurations that win on validation).
    test: bool = True
    # per_user: one case per user, all of the split's items relevant (this project's default; with leave-one-out
    # it is the standard single target). per_item: one next-item case per item of the split, history = every
    # item before it (growing, earlier split items included), as the released KDSR code evaluates its ratio
    # split (for comparison with its Beauty log; labelled). Validation uses the same case shape as test, and
    # sample_users then samples cases.
    cases: Literal["per_user", "per_item"] = "per_user"


class TrainConfig(Config):
    dataset: str  # a prepared dataset folder (kdsr prepare)
    out_dir: str  # the run directory
    seed: int = 42
    model: ModelConfig = ModelConfig()
    modalities: list[ModalityConfig] = []
    distill: DistillConfig = DistillConfig()
    async_step: AsyncStepConfig = AsyncStepConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    epochs: int = Field(100, gt=0)
    patience: int = Field(10, gt=0)  # epochs without a better validation NDCG@10 before stopping
    max_steps: int | None = Field(None, gt=0)  # cap on optimizer steps per epoch (smoke runs, tests)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: Literal["no", "bf16"] = "no"  # bf16 pays off on GPUs; on CPU it is usually slower
    num_workers: int = Field(1, ge=0)  # DataLoader workers (batching; teacher targets too, see below)
    # Where teacher targets are computed: true = in the DataLoader workers, ahead of the step (the method's
    # design); false = inside the step. None (auto): in the workers when they have cores of their own or the
    # step runs on a GPU, else in the step; on a CPU box whose cores all run torch threads a worker only
    # steals them (2 cores: +20% step time in a worker vs +9% in the step, bench/results/train.md).
    teacher_in_workers: bool | None = None
    # Batch windows of similar length (sorted inside random chunks of 64 batches, batch order shuffled):
    # padding to the batch's own length instead of ~50 makes an epoch several times faster.
    bucket_by_length: bool = True
    checkpoint_every: int | None = Field(None, gt=0)  # also checkpoint every N optimizer steps (mid-epoch)
    resume: bool = True  # continue from out_dir/checkpoints/last when it exists
    progress: bool = True  # a live bar on a terminal; a log line every 30 s when not a terminal or when false

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        names = [m.name for m in self.modalities]
        if len(set(names)) != len(names):
            raise ValueError(f"modality names must be unique, got {names}")
        if 10 not in self.eval.ks:
            raise ValueError("eval.ks must contain 10: model selection uses validation NDCG@10")
        if self.model.hidden % self.model.n_heads:
            raise ValueError(f"model.hidden {self.model.hidden} is not divisible by n_heads {self.model.n_heads}")
        if self.optim.sparse_tables and not self.optim.row_lookup:
            raise ValueError("optim.sparse_tables: true needs optim.loss bce or sampled_softmax (ce uses every row)")
        return self
