"""StemGen masked language model: the offline, non-autoregressive baseline (paper appendix
A.3 and A.5, SPEC section 5).

A bidirectional Transformer (all-True attention mask) over two positions per frame:
``proj(x_t) + inst`` and ``sum_q emb_q(y_{q,t}) + inst``. The appendix does not say how the
two are arranged; the SPEC asks for two positions per frame, and we interleave them
(``x_0, y_0, x_1, y_1, ..``, rotary positions ``0 .. 2T-1``) so a frame's input and output sit
next to each other. Each level's embedding has a MASK id (= V); heads predict codec ids only,
read at the output positions.

Training (:meth:`StemGenModel.forward`): per item, a level ``l`` uniform in ``[0, K)``; a
cosine-schedule ratio ``cos(pi/2 u)``, ``u ~ U[0, 1)``, of level ``l``'s frames is masked
(``ceil``, at least one frame) and every frame of levels above ``l``; levels below are given.
The loss is the cross-entropy on the masked cells of level ``l``. With probability
``input_dropout`` (0.2) an item's input embedding is zeroed, for classifier-free guidance.

Sampling (:meth:`StemGenModel.generate`): levels in order; per level ``min(steps, T)``
iterations, each predicting every masked cell, ranking by ``log p + temp * Gumbel`` (A.3 eq. 4;
temp annealed linearly to 0) and re-masking the least confident per the cosine schedule
(:func:`~stemstream.model.sampling.num_to_mask`). Guidance mixes logits
``uncond + scale * (cond - uncond)`` with the unconditional pass's input embedding zeroed; the
appendix gives only the scale (2.0), this is the usual (MusicGen/VampNet) logit form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stemstream.config import from_dict, to_dict
from stemstream.errors import ConfigError
from stemstream.model.sampling import (
    SamplingConfig,
    num_to_mask,
    sample_tokens,
    stemgen_confidence,
)
from stemstream.model.transformer import Transformer, TransformerConfig

__all__ = ["MaskPlan", "StemGenConfig", "StemGenModel", "StemGenOutput", "StemGenSchedule"]


@dataclass(frozen=True)
class StemGenSchedule:
    """Iterative-decoding settings (A.5), one entry per RVQ level.

    Attributes:
        steps_per_level: iterations per level (clamped to T at sampling time).
        noise_temperatures: maximum Gumbel-noise temperature per level, annealed to 0.
        guidance_scale: classifier-free guidance scale; 1.0 = conditional logits only.
    """

    steps_per_level: tuple[int, ...] = (128, 64, 32, 32)
    noise_temperatures: tuple[float, ...] = (8.0, 8.0, 4.0, 4.0)
    guidance_scale: float = 2.0

    def __post_init__(self) -> None:
        if len(self.steps_per_level) != len(self.noise_temperatures):
            raise ConfigError(
                f"steps_per_level ({len(self.steps_per_level)}) and noise_temperatures "
                f"({len(self.noise_temperatures)}) need one entry per level"
            )
        for steps in self.steps_per_level:
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ConfigError(f"steps_per_level entries must be ints >= 1, got {steps!r}")
        for temp in self.noise_temperatures:
            if not math.isfinite(temp) or temp < 0:
                raise ConfigError(f"noise_temperatures must be finite and >= 0, got {temp}")
        if not math.isfinite(self.guidance_scale):
            raise ConfigError(f"guidance_scale must be finite, got {self.guidance_scale}")


@dataclass(frozen=True)
class StemGenConfig:
    """Model shape, input dropout and default sampling schedule.

    Attributes:
        backbone: Transformer hyper-parameters.
        num_codebooks: K, RVQ levels per frame.
        codebook_size: V, codes per codebook; V is also the MASK id.
        input_dim: D_in, width of the input-stream latents.
        num_classes: instrument classes.
        input_dropout: probability that a training item's input embedding is zeroed.
        schedule: default sampling schedule; needs K entries.
    """

    backbone: TransformerConfig = field(default_factory=TransformerConfig)
    num_codebooks: int = 4
    codebook_size: int = 1024
    input_dim: int = 128
    num_classes: int = 18
    input_dropout: float = 0.2
    schedule: StemGenSchedule = field(default_factory=StemGenSchedule)

    def __post_init__(self) -> None:
        for name in ("num_codebooks", "codebook_size", "input_dim", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"StemGenConfig.{name} must be an int >= 1, got {value!r}")
        if not 0.0 <= self.input_dropout < 1.0:
            raise ConfigError(f"input_dropout must be in [0, 1), got {self.input_dropout}")
        if len(self.schedule.steps_per_level) != self.num_codebooks:
            raise ConfigError(
                f"schedule has {len(self.schedule.steps_per_level)} levels, "
                f"the model {self.num_codebooks}"
            )

    @property
    def mask_id(self) -> int:
        """Embedding id of a masked cell (= V)."""
        return self.codebook_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data; :meth:`from_dict` inverts it."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StemGenConfig:
        """Build from :meth:`to_dict` data; unknown keys raise :class:`ConfigError`."""
        return from_dict(cls, data)


class MaskPlan(NamedTuple):
    """One training draw: ``level [B]`` long, ``ratio [B]`` cosine masking ratio,
    ``mask [B, K, T]`` bool (True = masked) and ``drop_input [B]`` bool."""

    level: torch.Tensor
    ratio: torch.Tensor
    mask: torch.Tensor
    drop_input: torch.Tensor


class StemGenOutput(NamedTuple):
    """``logits [B, T, V]`` of each item's trained level, ``targets [B, T]`` (MASK id where a
    cell is not in the loss), the mean cross-entropy ``loss`` and the :class:`MaskPlan`."""

    logits: torch.Tensor
    targets: torch.Tensor
    loss: torch.Tensor
    plan: MaskPlan


class StemGenModel(nn.Module):
    """See the module docstring. Shapes: ``B`` batch, ``K`` codebooks, ``T`` frames, ``D``
    model width, ``D_in`` input-latent width, ``V`` codebook size."""

    def __init__(self, config: StemGenConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        dim = config.backbone.dim
        kw = {"device": device, "dtype": dtype}
        self.token_emb = nn.ModuleList(
            [nn.Embedding(config.codebook_size + 1, dim, **kw) for _ in range(config.num_codebooks)]
        )
        self.inst_emb = nn.Embedding(config.num_classes, dim, **kw)
        self.in_proj = nn.Linear(config.input_dim, dim, **kw)
        self.backbone = Transformer(config.backbone, **kw)
        self.heads = nn.Linear(dim, config.num_codebooks * config.codebook_size, **kw)
        for emb in [*self.token_emb, self.inst_emb]:
            nn.init.normal_(emb.weight, std=0.02)

    # ------------------------------------------------------------------------- pieces
    def frame_logits(
        self,
        input_latents: torch.Tensor,
        codes: torch.Tensor,
        inst: torch.Tensor,
        drop_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Bidirectional pass.

        Args:
            input_latents: ``[B, D_in, T_in]`` with ``T_in >= T`` (frames past T are unused).
            codes: long ``[B, K, T]`` in ``[0, V]`` (V = MASK).
            inst: long ``[B]``.
            drop_input: bool ``[B]``: zero these items' input embeddings.

        Returns:
            ``[B, K, T, V]``.
        """
        cfg = self.config
        num_frames = codes.shape[-1]
        if input_latents.ndim != 3 or input_latents.shape[1] != cfg.input_dim:
            raise ConfigError(
                f"input_latents must be [B, {cfg.input_dim}, T_in], "
                f"got {tuple(input_latents.shape)}"
            )
        if input_latents.shape[-1] < num_frames:
            raise ConfigError(
                f"StemGen needs an input frame per output frame: {num_frames} output frames, "
                f"{input_latents.shape[-1]} input frames"
            )
        x = self.in_proj(input_latents[..., :num_frames].transpose(1, 2))  # (B, T, D)
        if drop_input is not None:
            x = x * (~drop_input).to(x.dtype)[:, None, None]
        inst_e = self.inst_emb(inst)[:, None]  # (B, 1, D)
        y = sum(emb(codes[:, q]) for q, emb in enumerate(self.token_emb))  # (B, T, D)
        seq = torch.stack([x + inst_e, y + inst_e], dim=2).flatten(1, 2)  # (B, 2T, D)
        length = seq.shape[1]
        mask = torch.ones(length, length, dtype=torch.bool, device=seq.device)
        hidden = self.backbone(seq, positions=torch.arange(length, device=seq.device), mask=mask)
        logits = self.heads(hidden[:, 1::2])  # output positions: (B, T, K * V)
        return logits.unflatten(-1, (cfg.num_codebooks, cfg.codebook_size)).transpose(1, 2)

    def plan_masks(
        self,
        batch: int,
        num_frames: int,
        device: torch.device | None = None,
        generator: torch.Generator | None = None,
    ) -> MaskPlan:
        """Draw the training masks and input dropout (module docstring) for ``B`` items of
        ``T`` frames."""
        num_codebooks = self.config.num_codebooks
        level = torch.randint(0, num_codebooks, (batch,), generator=generator, device=device)
        progress = torch.rand(batch, generator=generator, device=device)
        ratio = torch.cos(math.pi / 2 * progress)
        count = torch.ceil(ratio * num_frames).long().clamp(1, num_frames)  # (B,)
        scores = torch.rand(batch, num_frames, generator=generator, device=device)
        rank = scores.argsort(dim=-1).argsort(dim=-1)
        level_cells = rank < count[:, None]  # (B, T): exactly `count` random frames
        q = torch.arange(num_codebooks, device=device)[None, :, None]  # (1, K, 1)
        lvl = level[:, None, None]
        mask = (q > lvl) | ((q == lvl) & level_cells[:, None])  # (B, K, T)
        drop = torch.rand(batch, generator=generator, device=device) < self.config.input_dropout
        return MaskPlan(level, ratio, mask, drop)

    # ----------------------------------------------------------------------- training
    def forward(
        self,
        input_latents: torch.Tensor,
        target_codes: torch.Tensor,
        inst: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> StemGenOutput:
        """One masked-LM training pass.

        Args:
            input_latents: ``[B, D_in, T_in]``, ``T_in >= T``.
            target_codes: long ``[B, K, T]``.
            inst: long ``[B]``.
            generator: for reproducible masks and input dropout.
        """
        batch, _, num_frames = target_codes.shape
        plan = self.plan_masks(batch, num_frames, target_codes.device, generator)
        masked = target_codes.masked_fill(plan.mask, self.config.mask_id)
        logits = self.frame_logits(input_latents, masked, inst, plan.drop_input)
        rows = torch.arange(batch, device=target_codes.device)
        level_logits = logits[rows, plan.level]  # (B, T, V)
        in_loss = plan.mask[rows, plan.level]  # (B, T)
        targets = target_codes[rows, plan.level].masked_fill(~in_loss, self.config.mask_id)
        loss = F.cross_entropy(level_logits[in_loss], targets[in_loss])
        return StemGenOutput(level_logits, targets, loss, plan)

    # --------------------------------------------------------------------- generation
    def guided_logits(
        self,
        input_latents: torch.Tensor,
        codes: torch.Tensor,
        inst: torch.Tensor,
        level: int,
        scale: float,
    ) -> torch.Tensor:
        """Classifier-free guided logits ``[B, T, V]`` of ``level``:
        ``uncond + scale * (cond - uncond)``, both halves in one batched pass."""
        batch = codes.shape[0]
        drop = torch.arange(2 * batch, device=codes.device) >= batch
        logits = self.frame_logits(
            input_latents.repeat(2, 1, 1), codes.repeat(2, 1, 1), inst.repeat(2), drop
        )[:, level]
        cond, uncond = logits.split(batch)
        return uncond + scale * (cond - uncond)

    @torch.no_grad()
    def sample_level(
        self,
        input_latents: torch.Tensor,
        codes: torch.Tensor,
        inst: torch.Tensor,
        level: int,
        sampling: SamplingConfig,
        schedule: StemGenSchedule,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Fill level ``level`` of ``codes [B, K, T]`` (all MASK there) by iterative decoding;
        returns the updated codes."""
        mask_id, num_frames = self.config.mask_id, codes.shape[-1]
        num_steps = min(schedule.steps_per_level[level], num_frames)
        codes = codes.clone()
        masked = codes[:, level] == mask_id  # (B, T), the same count in every row
        for step in range(num_steps):
            logits = self.guided_logits(input_latents, codes, inst, level, schedule.guidance_scale)
            tokens = sample_tokens(
                logits,
                sampling.temperature,
                sampling.top_k,
                generator,
                valid_vocab=self.config.codebook_size,
            )  # (B, T)
            log_probs = logits.float().log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
            conf = stemgen_confidence(
                log_probs, step, num_steps, schedule.noise_temperatures[level], generator
            ).masked_fill(~masked, float("inf"))  # decided cells stay decided
            keep = num_to_mask(num_frames, step, num_steps, int(masked[0].sum()))
            rank = conf.argsort(dim=-1).argsort(dim=-1)
            remask = rank < keep
            proposal = torch.where(masked, tokens, codes[:, level])
            codes[:, level] = proposal.masked_fill(remask, mask_id)
            masked = remask
        return codes

    @torch.no_grad()
    def use_steps(self, steps_per_level: Sequence[int]) -> None:
        """Sample with ``steps_per_level`` iterations per level from now on (its default
        schedule otherwise; e.g. fewer than A.5's for a CPU budget)."""
        schedule = self.config.schedule
        if len(steps_per_level) != len(schedule.steps_per_level):
            raise ConfigError(f"steps_per_level needs one entry per level "
                              f"({len(schedule.steps_per_level)}), got {list(steps_per_level)}")
        steps = replace(schedule, steps_per_level=tuple(steps_per_level))
        self.config = replace(self.config, schedule=steps)

    def generate(
        self,
        input_latents: torch.Tensor,
        inst: torch.Tensor,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
        schedule: StemGenSchedule | None = None,
        num_frames: int | None = None,
    ) -> torch.Tensor:
        """Generate a whole output stem for a whole input file, level by level.

        Args:
            input_latents: ``[B, D_in, T_in]``.
            inst: long ``[B]``.
            sampling: token temperature / top-k; default 1.0 / 200 (clamped to V).
            generator: for reproducible draws.
            schedule: default ``config.schedule``.
            num_frames: T, at most ``T_in``; default ``T_in``.

        Returns:
            long codes ``[B, K, T]`` in ``[0, V)``.
        """
        sampling = sampling or SamplingConfig()
        schedule = schedule or self.config.schedule
        if len(schedule.steps_per_level) != self.config.num_codebooks:
            raise ConfigError(f"schedule needs {self.config.num_codebooks} levels")
        num_frames = input_latents.shape[-1] if num_frames is None else num_frames
        if num_frames < 1:
            raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
        shape = (inst.shape[0], self.config.num_codebooks, num_frames)
        codes = torch.full(shape, self.config.mask_id, dtype=torch.long, device=inst.device)
        for level in range(self.config.num_codebooks):
            codes = self.sample_level(
                input_latents, codes, inst, level, sampling, schedule, generator
            )
        return codes
