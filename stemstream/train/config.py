"""Typed configuration of a model training run (``configs/model/*.yaml``) and its LR schedule.

Seconds are resolved to frames against the token dump once, in :func:`resolve_future_frames`,
so the rest of the loop only ever sees frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stemstream.errors import ConfigError
from stemstream.features import check_features
from stemstream.guidance import check_guidance


@dataclass(frozen=True)
class ModelSpec:
    """The model to train (family-independent fields; each family reads what it needs).

    Attributes:
        backbone: transformer preset name (``tiny``, ``cpu``, ``paper``).
        backbone_overrides: fields of the preset to replace, e.g. ``{dropout: 0.1}``.
        num_codebooks: ``K``, RVQ levels modelled (and embedded as input); at most the dump's.
        future_frames: ``t_f`` in frames; ``None`` = from ``future_seconds``, else the dump's.
        future_seconds: ``t_f`` in seconds (converted with the dump's frame rate).
        chunk_frames: ``k``, frames decided per call.
        input_encoder: streaming family only: ``frame`` (the paper: each position hears one
            input frame) or ``conv`` (a causal summary of the visible input window, see
            :mod:`stemstream.model.input_encoder`).
        input_window: frames of recent input the ``conv`` encoder summarises.
        input_features: streaming only: musical features of the input audio heard beside the
            latents (names from :data:`stemstream.features.FEATURE_NAMES`; needs a track dump
            that stores them, see ``stemstream data dump-features``).
        beat_lead_seconds: streaming only: how far the ``beat`` feature's phase is advanced
            before the model hears it; ``(1 - t_f) / frame rate`` makes a ``k = 1`` position
            hear the phase of the frame it decides (see ``StreamingDecoderConfig``).
        history_dropout: streaming family only: the probability that a training window hides
            its whole target history from the model, which must then predict from the input
            and the instrument alone (an input-forcing regulariser; 0 = off).
        history_noise: streaming only: the fraction of target-history codes replaced by
            random codes in training.
        history_span: streaming only: the fraction of target-history steps hidden in spans of
            ``history_span_frames`` in training.
        history_shift: streaming only: the probability that a training window shows its
            target history late by 1 to ``history_shift_frames`` frames, so the history no
            longer tells where the beat falls now and the input must (the live model's lever).
        onset_loss_weight: streaming only: weight of an auxiliary head predicting the target's
            note onsets (needs a whole-track dump, which stores them; 0 = no head).
        anticipation_frames: streaming only: frames of not-yet-heard input whose change
            (latent flux) an auxiliary head predicts at each position (0 = no head).
        anticipation_loss_weight: streaming only: that head's weight in the loss.
        input_dropout: streaming only: the probability that a training window hears no input
            at all, which trains the unconditional logits of input guidance (``--guidance``).
        num_classes: instrument classes (``None`` = :data:`~stemstream.data.instruments.
            NUM_CLASSES`).
    """

    backbone: str = "tiny"
    backbone_overrides: dict[str, Any] = field(default_factory=dict)
    num_codebooks: int = 4
    future_frames: int | None = None
    future_seconds: float | None = None
    chunk_frames: int = 1
    input_encoder: str = "frame"
    input_window: int = 8
    input_features: tuple[str, ...] = ()
    beat_lead_seconds: float = 0.0
    history_dropout: float = 0.0
    history_noise: float = 0.0
    history_span: float = 0.0
    history_span_frames: int = 25
    history_shift: float = 0.0
    history_shift_frames: int = 50
    onset_loss_weight: float = 0.0
    anticipation_frames: int = 0
    anticipation_loss_weight: float = 0.0
    input_dropout: float = 0.0
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if self.num_codebooks < 1:
            raise ConfigError(f"model.num_codebooks must be >= 1, got {self.num_codebooks}")
        if self.chunk_frames < 1:
            raise ConfigError(f"model.chunk_frames (k) must be >= 1, got {self.chunk_frames}")
        for name in ("history_dropout", "history_noise", "history_span", "history_shift",
                     "input_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"model.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.future_frames is not None and self.future_seconds is not None:
            raise ConfigError("give model.future_frames or model.future_seconds, not both")
        if self.future_seconds is not None and not math.isfinite(self.future_seconds):
            raise ConfigError(f"model.future_seconds must be finite, got {self.future_seconds}")
        try:
            check_features(self.input_features)
        except ConfigError as err:
            raise ConfigError(f"model.input_features: {err}") from None


@dataclass(frozen=True)
class ModelTrainConfig:
    """Everything a model training run needs. Defaults follow SPEC section 6 (AdamW lr 1e-4,
    linear warm-up then cosine decay to 1e-5, gradient clip 1.0)."""

    dump_dir: Path = Path("dumps/tokens")
    out_dir: Path = Path("runs/model")
    codec: str = "default"  # a get_codec() spec; must be the codec the dump was made with
    family: str = "streaming"
    model: ModelSpec = field(default_factory=ModelSpec)
    train_split: str = "train"
    valid_split: str = "validation"
    valid_batches: int = 8  # at most this many (fixed, in order) validation batches
    # whole-track dumps only: output frames of each window cut at random at every step
    crop_seconds: float = 10.0
    # streaming history corruption (model.history_*) is scaled from 1 at step 0 linearly to
    # this at the last step: strong early, so the input path is learned first
    history_scale_end: float = 1.0
    batch_size: int = 16  # per process
    steps: int = 1000
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_steps: int = 100
    betas: tuple[float, ...] = (0.9, 0.95)
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # autocast to bfloat16 on CUDA (never on CPU)
    log_every: int = 25
    valid_every: int = 250
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    num_workers: int = 0
    threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default
    # Warm start (fresh runs only; a resumed run loads its own checkpoint): the weights of a
    # model checkpoint of the same family, with ``init_layers`` naming which of its backbone
    # blocks become this model's blocks (e.g. [0, 2, 4] for a 3-layer model from a 6-layer
    # one). Every other tensor must match in shape. ``init_shared: true`` relaxes that for
    # another family (e.g. a prefix decoder from a streaming model): the tensors both models
    # have, by name and shape, are loaded and the rest keep their fresh initialisation.
    init_from: Path | None = None
    init_layers: tuple[int, ...] | None = None
    init_shared: bool = False
    # Guidance distillation (streaming family, stemstream.train.distill): the model learns the
    # logits the checkpoint at ``distill_from`` samples from under input guidance
    # ``distill_guidance`` (None = the guidance stored in it; one number, or one per codebook),
    # KL(teacher || model) weighted ``distill_weight`` and the usual loss on the true tokens
    # ``1 - distill_weight``; the KL of tokens just after a target note onset counts
    # ``distill_onset_weight`` times (whole-track dumps, which know the onsets). A share
    # ``distill_mismatch`` of each training batch hears another row's input, teacher and
    # student alike, so the model also learns what the teacher does when its input and the
    # stem's history disagree (the input must win: that is listening)
    distill_from: Path | None = None
    distill_guidance: float | tuple[float, ...] | None = None
    distill_weight: float = 1.0
    distill_onset_weight: float = 1.0
    distill_mismatch: float = 0.0

    def __post_init__(self) -> None:
        positive = ("batch_size", "steps", "log_every", "valid_every", "checkpoint_every")
        for name in (*positive, "keep_checkpoints", "valid_batches"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "num_workers", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.min_lr <= self.lr:
            raise ConfigError(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.grad_clip <= 0:
            raise ConfigError(f"grad_clip must be > 0, got {self.grad_clip}")
        if not 0 <= self.history_scale_end <= 1:
            raise ConfigError(f"history_scale_end must be in [0, 1], got "
                              f"{self.history_scale_end}")
        if not (math.isfinite(self.crop_seconds) and self.crop_seconds > 0):
            raise ConfigError(f"crop_seconds must be > 0, got {self.crop_seconds}")
        if self.init_layers is not None and self.init_from is None:
            raise ConfigError("init_layers needs init_from")
        if self.init_shared and self.init_from is None:
            raise ConfigError("init_shared needs init_from")
        if self.distill_from is not None and self.family != "streaming":
            raise ConfigError(f"distill_from applies to the streaming family, not "
                              f"{self.family!r}")
        if self.distill_from is None and self.distill_guidance is not None:
            raise ConfigError("distill_guidance needs distill_from")
        if self.distill_guidance is not None:
            check_guidance(self.distill_guidance)
        if self.distill_from is None and self.distill_onset_weight != 1:
            raise ConfigError("distill_onset_weight needs distill_from")
        if not (math.isfinite(self.distill_onset_weight) and self.distill_onset_weight > 0):
            raise ConfigError(f"distill_onset_weight must be > 0, got "
                              f"{self.distill_onset_weight}")
        if not 0 <= self.distill_weight <= 1:
            raise ConfigError(f"distill_weight must be in [0, 1], got {self.distill_weight}")
        if not 0 <= self.distill_mismatch < 1:
            raise ConfigError(f"distill_mismatch must be in [0, 1), got {self.distill_mismatch}")
        if self.distill_from is None and self.distill_mismatch:
            raise ConfigError("distill_mismatch needs distill_from")
        if self.distill_mismatch and self.distill_weight < 1:
            raise ConfigError("distill_mismatch needs distill_weight 1: the loss on the true "
                              "tokens would teach the mismatched rows to ignore their input")


def resolve_future_frames(
    spec: ModelSpec, frame_rate_hz: float, dumped_future: int | None
) -> int:
    """``t_f`` in frames: explicit frames, else seconds at the dump's frame rate, else the
    dump's own ``t_f`` (``None``: a whole-track dump, which holds any look-ahead; default 0).
    Raises :class:`ConfigError` when it needs input the dump lacks or the seconds are not a
    whole number of frames."""
    if spec.future_frames is not None:
        frames = spec.future_frames
    elif spec.future_seconds is not None:
        exact = spec.future_seconds * frame_rate_hz
        frames = round(exact)
        if abs(exact - frames) > 1e-6:
            raise ConfigError(
                f"model.future_seconds={spec.future_seconds} is not a whole number of frames "
                f"at {frame_rate_hz:g} frames/s"
            )
    else:
        frames = dumped_future or 0
    if dumped_future is not None and frames > dumped_future:
        raise ConfigError(
            f"t_f = {frames} frames needs future input the dump lacks (it holds "
            f"{dumped_future}); re-dump with `stemstream data dump --tf`"
        )
    return frames

