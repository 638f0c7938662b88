"""Offline prefix decoder: the whole input stream, then the output, under one causal mask
(paper appendix A.3, SPEC section 5).

The sequence is ``[inst ; x_0 .. x_{T_in-1} ; start ; y_0 .. y_{S-2}]``: the instrument class
token, every input latent projected to the model width, a learned start-of-output embedding,
then the delayed output steps (codebook embeddings summed per step). Position ``1 + T_in + s``
carries step ``s - 1`` (the start embedding for ``s = 0``) and predicts step ``s``, so every
output step sees the whole input: the model is offline. A.3 puts no bidirectional mask on the
prefix; a single causal mask covers the sequence. The loss covers output steps only, with the
delay pattern's pads ignored; heads predict codec tokens ``[0, V)`` only and pads are forced.

Generation splits by phase (gpt-fast): :meth:`PrefixDecoder.prefill` runs the prefix into the
KV caches, :meth:`PrefixDecoder.decode_step` feeds one step, :meth:`PrefixDecoder.generate`
loops and reverts the delay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stemstream.config import from_dict, to_dict
from stemstream.errors import ConfigError
from stemstream.model.delay import DelayPattern
from stemstream.model.kv_cache import KVCache
from stemstream.model.sampling import SamplingConfig, sample_tokens
from stemstream.model.streaming import StreamOutput
from stemstream.model.transformer import Transformer, TransformerConfig

__all__ = ["PrefixDecoder", "PrefixDecoderConfig", "PrefixState"]


@dataclass(frozen=True)
class PrefixDecoderConfig:
    """Model shape of the offline prefix decoder.

    Attributes:
        backbone: Transformer hyper-parameters.
        num_codebooks: K, RVQ levels per frame.
        codebook_size: V, codes per codebook.
        input_dim: D_in, width of the input-stream latents.
        num_classes: instrument classes.
    """

    backbone: TransformerConfig = field(default_factory=TransformerConfig)
    num_codebooks: int = 4
    codebook_size: int = 1024
    input_dim: int = 128
    num_classes: int = 18

    def __post_init__(self) -> None:
        for name in ("num_codebooks", "codebook_size", "input_dim", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"PrefixDecoderConfig.{name} must be an int >= 1, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data; :meth:`from_dict` inverts it."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrefixDecoderConfig:
        """Build from :meth:`to_dict` data; unknown keys raise :class:`ConfigError`."""
        return from_dict(cls, data)


@dataclass
class PrefixState:
    """Decoding state: instrument ``inst [B]``, per-layer caches, the next rotary position,
    the next delayed step, and the output length ``num_frames`` (T)."""

    inst: torch.Tensor
    caches: list[KVCache]
    position: int
    step: int
    num_frames: int


class PrefixDecoder(nn.Module):
    """See the module docstring. Shapes: ``B`` batch, ``K`` codebooks, ``T`` output frames,
    ``T_in`` input frames, ``S`` delayed steps (``T + K - 1``), ``D`` model width."""

    def __init__(self, config: PrefixDecoderConfig, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        dim = config.backbone.dim
        kw = {"device": device, "dtype": dtype}
        self.delay = DelayPattern(config.num_codebooks, config.codebook_size)
        self.token_emb = nn.ModuleList(
            [nn.Embedding(self.delay.vocab_size, dim, **kw) for _ in range(config.num_codebooks)]
        )
        self.inst_emb = nn.Embedding(config.num_classes, dim, **kw)
        self.start_emb = nn.Parameter(torch.zeros(dim, **kw))
        self.in_proj = nn.Linear(config.input_dim, dim, **kw)
        self.norm_x = nn.LayerNorm(dim, **kw)
        self.backbone = Transformer(config.backbone, **kw)
        self.heads = nn.Linear(dim, config.num_codebooks * config.codebook_size, **kw)
        for emb in [*self.token_emb, self.inst_emb]:
            nn.init.normal_(emb.weight, std=0.02)
        nn.init.normal_(self.start_emb, std=0.02)

    # ------------------------------------------------------------------------- pieces
    def embed_prefix(self, input_latents: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
        """``input_latents [B, D_in, T_in]``, ``inst [B]`` -> ``[B, T_in + 2, D]``: the
        instrument token, the projected input frames and the start-of-output embedding."""
        if input_latents.ndim != 3 or input_latents.shape[1] != self.config.input_dim:
            raise ConfigError(
                f"input_latents must be [B, {self.config.input_dim}, T_in], "
                f"got {tuple(input_latents.shape)}"
            )
        x = self.norm_x(self.in_proj(input_latents.transpose(1, 2)))  # (B, T_in, D)
        start = self.start_emb.expand(x.shape[0], 1, -1)
        return torch.cat([self.inst_emb(inst)[:, None], x, start], dim=1)

    def embed_steps(self, delayed: torch.Tensor) -> torch.Tensor:
        """Delayed tokens ``[B, K, L]`` (pads allowed) -> summed embeddings ``[B, L, D]``."""
        return sum(emb(delayed[:, q]) for q, emb in enumerate(self.token_emb))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, L, D] -> [B, L, K, V]``."""
        return self.heads(hidden).unflatten(
            -1, (self.config.num_codebooks, self.config.codebook_size)
        )

    # ----------------------------------------------------------------------- training
    def forward(
        self, input_latents: torch.Tensor, target_codes: torch.Tensor, inst: torch.Tensor
    ) -> StreamOutput:
        """Teacher-forced pass over whole windows.

        Args:
            input_latents: ``[B, D_in, T_in]`` the whole input stream.
            target_codes: long ``[B, K, T]``.
            inst: long ``[B]`` instrument classes.

        Returns:
            ``logits [B, S, K, V]`` (one row per delayed step), ``targets [B, K, S]`` (the
            delayed codes, ``pad_id`` where there is none) and the mean cross-entropy over
            non-pad cells.
        """
        delayed = self.delay.apply(target_codes)  # (B, K, S)
        prefix = self.embed_prefix(input_latents, inst)  # (B, T_in + 2, D)
        x = torch.cat([prefix, self.embed_steps(delayed[:, :, :-1])], dim=1)
        positions = torch.arange(x.shape[1], device=x.device)
        hidden = self.backbone(x, positions=positions)  # causal
        num_steps = delayed.shape[-1]
        logits = self.logits(hidden[:, -num_steps:])  # (B, S, K, V)
        loss = F.cross_entropy(
            logits.flatten(0, 2), delayed.transpose(1, 2).flatten(), ignore_index=self.delay.pad_id
        )
        return StreamOutput(logits, delayed, loss)

    # --------------------------------------------------------------------- generation
    @torch.no_grad()
    def prefill(
        self, input_latents: torch.Tensor, inst: torch.Tensor, num_frames: int | None = None
    ) -> tuple[PrefixState, torch.Tensor]:
        """Run ``[inst ; x ; start]`` into fresh KV caches.

        Args:
            input_latents: ``[B, D_in, T_in]``.
            inst: long ``[B]``.
            num_frames: T, output frames to generate; default ``T_in``.

        Returns:
            The state and the logits ``[B, K, V]`` of delayed step 0.
        """
        num_frames = input_latents.shape[-1] if num_frames is None else num_frames
        if num_frames < 1:
            raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
        prefix = self.embed_prefix(input_latents, inst)
        length = prefix.shape[1] + self.delay.num_steps(num_frames)
        caches = self.backbone.make_caches(inst.shape[0], length)
        positions = torch.arange(prefix.shape[1], device=prefix.device)
        hidden = self.backbone(prefix, positions=positions, caches=caches)
        state = PrefixState(inst, caches, prefix.shape[1], 0, num_frames)
        return state, self.logits(hidden[:, -1:])[:, 0]

    @torch.no_grad()
    def decode_step(self, state: PrefixState, tokens: torch.Tensor) -> torch.Tensor:
        """Feed the tokens ``[B, K]`` of step ``state.step``; return the logits ``[B, K, V]``
        of the next step. Updates ``state`` in place."""
        x = self.embed_steps(tokens[:, :, None])
        positions = torch.tensor([state.position], device=x.device)
        hidden = self.backbone(x, positions=positions, caches=state.caches)
        state.position += 1
        state.step += 1
        return self.logits(hidden)[:, 0]

    def force_pads(self, tokens: torch.Tensor, step: int, num_frames: int) -> torch.Tensor:
        """Put ``pad_id`` in the codebooks of ``tokens [B, K]`` that hold no code at ``step``."""
        frames = self.delay.emitted_frame(step, num_frames).to(tokens.device)
        return torch.where((frames >= 0)[None], tokens, self.delay.pad_id)

    @torch.no_grad()
    def generate(
        self,
        input_latents: torch.Tensor,
        inst: torch.Tensor,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
        num_frames: int | None = None,
    ) -> torch.Tensor:
        """Generate a whole output stem for a whole input file.

        Args:
            input_latents: ``[B, D_in, T_in]``.
            inst: long ``[B]``.
            sampling: temperature / top-k; default the paper's (1.0, 200).
            generator: for reproducible draws.
            num_frames: T; default ``T_in``.

        Returns:
            long codes ``[B, K, T]`` in ``[0, V)``.
        """
        sampling = sampling or SamplingConfig()
        state, logits = self.prefill(input_latents, inst, num_frames)
        steps = []
        for step in range(self.delay.num_steps(state.num_frames)):
            tokens = sample_tokens(
                logits,
                sampling.temperature,
                sampling.top_k,
                generator,
                valid_vocab=self.config.codebook_size,
            )
            tokens = self.force_pads(tokens, step, state.num_frames)
            steps.append(tokens)
            if step + 1 < self.delay.num_steps(state.num_frames):
                logits = self.decode_step(state, tokens)
        return self.delay.revert(torch.stack(steps, dim=-1))
