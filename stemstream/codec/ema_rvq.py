"""Residual vector quantisation with factorised, L2-normalised, EMA-updated codebooks.

Each level projects the residual ``[B, D, T]`` to a small ``codebook_dim``, L2-normalises it,
picks the nearest (cosine) codebook entry, and projects the entry back to ``D``. Codebooks are
not trained by gradients but by exponential moving averages of the vectors assigned to them
(k-means online), which avoids the collapse that gradient-trained codebooks showed on a small
CPU budget (CODEC-CALIBRATION.md). Entries unused for a while are restarted from random
vectors of the current batch. Projections are trained by gradients through a straight-through
estimator; the commitment loss pulls the projected vectors towards their codes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stemstream.codec.layers import PointwiseConv1d


class QuantizerOutput(NamedTuple):
    """``quantized [B, D, T]`` (straight-through), ``codes`` long ``[B, K, T]``, scalar
    ``commitment_loss``."""

    quantized: torch.Tensor
    codes: torch.Tensor
    commitment_loss: torch.Tensor


class EMACodebook(nn.Module):
    """One level: ``in_proj`` (D -> d), normalised nearest neighbour, ``out_proj`` (d -> D)."""

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int, decay: float):
        super().__init__()
        self.decay = decay
        self.in_proj = PointwiseConv1d(dim, codebook_dim)
        self.out_proj = PointwiseConv1d(codebook_dim, dim)
        nn.init.zeros_(self.in_proj.bias)
        nn.init.zeros_(self.out_proj.bias)
        self.register_buffer(
            "codebook", F.normalize(torch.randn(codebook_size, codebook_dim), dim=1)
        )
        self.register_buffer("ema_count", torch.ones(codebook_size))
        self.register_buffer("ema_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))

    def project(self, residual: torch.Tensor) -> torch.Tensor:
        """``[B, D, T] -> [B*T, d]`` normalised vectors."""
        return F.normalize(self.in_proj.frames(residual), dim=1)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        return (flat @ self.codebook.t()).argmax(dim=1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """long ``[B, T] -> [B, D, T]``: the level's contribution to the latent."""
        if torch.is_grad_enabled() and self.out_proj.weight.requires_grad:
            vectors = F.embedding(codes, self.codebook).transpose(1, 2)
            return self.out_proj(vectors)
        # Inference: index a table of projected entries instead of projecting per call.
        return F.embedding(codes, self._table()).transpose(1, 2)

    def _table(self) -> torch.Tensor:
        """``[codebook_size, D]`` = ``out_proj(codebook)``, rebuilt when any input changed
        (``_version`` counts in-place updates: optimizer steps, EMA, load_state_dict)."""
        if torch.compiler.is_compiling():  # traced (stemstream.codec.compiled): a constant
            return self.out_proj(self.codebook.t()[None])[0].t()
        key = (self.codebook._version, self.out_proj.weight._version,
               self.out_proj.bias._version, self.codebook.data_ptr(),
               self.out_proj.weight.data_ptr(), self.codebook.device, self.codebook.dtype)
        if getattr(self, "_table_key", None) != key:
            with torch.no_grad():
                table = self.out_proj(self.codebook.t()[None])[0].t().contiguous()
            self._table_cache, self._table_key = table, key
        return self._table_cache

    @torch.no_grad()
    def init_from(self, flat: torch.Tensor) -> None:
        """Data initialisation: entries drawn from the first training batch's vectors."""
        picks = flat[torch.randint(len(flat), (self.codebook.shape[0],), device=flat.device)]
        self.codebook.copy_(picks)
        self.ema_sum.copy_(picks)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def ema_update(self, flat: torch.Tensor, codes: torch.Tensor) -> None:
        size = self.codebook.shape[0]
        onehot = F.one_hot(codes, size).type_as(flat)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.t() @ flat, alpha=1 - self.decay)
        self.codebook.copy_(F.normalize(self.ema_sum, dim=1))

    @torch.no_grad()
    def restart_dead(self, flat: torch.Tensor, threshold: float) -> int:
        """Re-seed entries whose EMA count fell below ``threshold`` from batch vectors."""
        dead = self.ema_count < threshold
        n = int(dead.sum())
        if n:
            picks = flat[torch.randint(len(flat), (n,), device=flat.device)]
            self.codebook[dead] = picks
            self.ema_sum[dead] = picks
            self.ema_count[dead] = 1.0
        return n


class EMAResidualVQ(nn.Module):
    """``num_codebooks`` :class:`EMACodebook` levels applied to successive residuals.

    Args:
        dim: latent channels ``D``.
        num_codebooks: levels ``K``.
        codebook_size: entries per level.
        codebook_dim: factorised dimension ``d``.
        decay: EMA decay.
        quantizer_dropout: probability that a training item uses only a random number of
            levels (1..K), so that the first levels alone decode well.
    """

    def __init__(
        self,
        dim: int,
        num_codebooks: int,
        codebook_size: int,
        codebook_dim: int,
        decay: float = 0.99,
        quantizer_dropout: float = 0.5,
    ):
        super().__init__()
        self.quantizer_dropout = quantizer_dropout
        self.levels = nn.ModuleList(
            [EMACodebook(dim, codebook_size, codebook_dim, decay) for _ in range(num_codebooks)]
        )

    def forward(self, latent: torch.Tensor, num_codebooks: int | None = None) -> QuantizerOutput:
        """Quantise ``[B, D, T]``; in training mode also update the codebooks."""
        batch, _, frames = latent.shape
        k_max = num_codebooks or len(self.levels)
        keep = torch.full((batch,), k_max, device=latent.device)
        if self.training and self.quantizer_dropout > 0:
            drop = torch.rand(batch, device=latent.device) < self.quantizer_dropout
            random_k = torch.randint(1, k_max + 1, (batch,), device=latent.device)
            keep = torch.where(drop, random_k, keep)

        residual = latent
        quantized = torch.zeros_like(latent)
        codes, commitment = [], latent.new_zeros(())
        for k, level in enumerate(self.levels[:k_max]):
            flat = level.project(residual)
            if self.training and not bool(level.initialised):
                level.init_from(flat.detach())
            idx = level.nearest(flat.detach())
            if self.training:
                level.ema_update(flat.detach(), idx)
            chosen = F.embedding(idx, level.codebook)
            commitment = commitment + F.mse_loss(flat, chosen.detach())
            straight = flat + (chosen - flat).detach()
            vectors = straight.view(batch, frames, -1).transpose(1, 2)
            contribution = level.out_proj(vectors)
            active = (k < keep).to(latent.dtype)[:, None, None]
            quantized = quantized + contribution * active
            residual = residual - contribution.detach() * active
            codes.append(idx.view(batch, frames))
        return QuantizerOutput(quantized, torch.stack(codes, dim=1), commitment / k_max)

    @torch.no_grad()
    def encode(self, latent: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """``[B, D, T]`` -> long ``[B, K', T]`` (no updates)."""
        batch, _, frames = latent.shape
        residual, codes = latent, []
        for level in self.levels[:num_codebooks]:
            idx = level.nearest(level.project(residual)).view(batch, frames)
            residual = residual - level.lookup(idx)
            codes.append(idx)
        return torch.stack(codes, dim=1)

    def embed(self, codes: torch.Tensor, depths: torch.Tensor | None = None) -> torch.Tensor:
        """long ``[B, K', T]`` -> ``[B, D, T]``: sum of the first ``K'`` levels (of the first
        ``depths[b]`` levels for item ``b`` when long ``depths [B]`` is given)."""
        latent = 0
        for k, level in enumerate(self.levels[: codes.shape[1]]):
            vectors = level.lookup(codes[:, k])
            if depths is not None:
                vectors = vectors * (k < depths.to(codes.device)).to(vectors.dtype)[:, None, None]
            latent = latent + vectors
        return latent

    @torch.no_grad()
    def restart_dead(self, latent: torch.Tensor, threshold: float) -> list[int]:
        """Restart dead entries of every level with vectors of the residuals of ``latent``."""
        counts, residual = [], latent
        for level in self.levels:
            flat = level.project(residual)
            counts.append(level.restart_dead(flat, threshold))
            residual = residual - level.lookup(level.nearest(flat).view(latent.shape[0], -1))
        return counts
