"""Residual vector quantisation with factorised, L2-normalised codebooks (DAC's RVQ).

Each level projects the residual ``[B, D, T]`` to a low dimension ``d`` (``in_proj``, a
weight-normalised 1x1 conv), picks the nearest codebook entry by cosine similarity, and
projects the (unnormalised) entry back to ``D`` (``out_proj``). Parameter names and the
arithmetic follow descript-audio-codec's ``dac/nn/quantize.py`` so codes match bit for bit.
Training uses the straight-through estimator, commitment / codebook losses and quantizer
dropout (a random number of levels for a fraction of the batch).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stemstream.codec.layers import WNConv1d


class QuantizerOutput(NamedTuple):
    """What :meth:`ResidualVectorQuantize.forward` returns.

    Attributes:
        z_q: ``[B, D, T]`` quantised latent (straight-through gradients to the input).
        codes: long ``[B, K, T]``.
        latents: ``[B, K * d, T]`` projected latents before quantisation.
        commitment_loss: scalar, pulls the encoder towards the codebooks.
        codebook_loss: scalar, pulls the codebooks towards the encoder.
    """

    z_q: torch.Tensor
    codes: torch.Tensor
    latents: torch.Tensor
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor


class VectorQuantize(nn.Module):
    """One RVQ level: ``in_proj`` -> nearest normalised code -> ``out_proj``."""

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.in_proj = WNConv1d(input_dim, codebook_dim, kernel_size=1)
        self.out_proj = WNConv1d(codebook_dim, input_dim, kernel_size=1)
        self.codebook = nn.Embedding(codebook_size, codebook_dim)

    def nearest(self, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codebook entries by cosine similarity.

        Args:
            z_e: ``[B, d, T]`` projected latent.

        Returns:
            ``(z_q [B, d, T], indices long [B, T])``; ``z_q`` holds the raw entries.
        """
        batch, dim, frames = z_e.shape
        encodings = F.normalize(z_e.transpose(1, 2).reshape(batch * frames, dim))
        codebook = F.normalize(self.codebook.weight)
        dist = (
            encodings.pow(2).sum(1, keepdim=True)
            - 2 * encodings @ codebook.t()
            + codebook.pow(2).sum(1, keepdim=True).t()
        )
        indices = (-dist).max(1)[1].reshape(batch, frames)
        return self.lookup(indices), indices

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """long ``[B, T]`` -> raw codebook entries ``[B, d, T]``."""
        return F.embedding(indices, self.codebook.weight).transpose(1, 2)

    def forward(
        self, z: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise one level.

        Args:
            z: ``[B, D, T]`` residual.

        Returns:
            ``(z_q [B, D, T], commitment [B], codebook_loss [B], indices [B, T], z_e [B, d, T])``.
        """
        z_e = self.in_proj(z)
        z_q, indices = self.nearest(z_e)
        commitment = F.mse_loss(z_e, z_q.detach(), reduction="none").mean([1, 2])
        codebook_loss = F.mse_loss(z_q, z_e.detach(), reduction="none").mean([1, 2])
        z_q = z_e + (z_q - z_e).detach()  # straight-through; same rounding as the reference
        return self.out_proj(z_q), commitment, codebook_loss, indices, z_e


class ResidualVectorQuantize(nn.Module):
    """``n_codebooks`` levels, each quantising the residual the previous ones left."""

    def __init__(
        self,
        input_dim: int,
        n_codebooks: int,
        codebook_size: int,
        codebook_dim: int | tuple[int, ...],
        quantizer_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        dims = (codebook_dim,) * n_codebooks if isinstance(codebook_dim, int) else codebook_dim
        self.n_codebooks = n_codebooks
        self.codebook_size = codebook_size
        self.quantizer_dropout = float(quantizer_dropout)
        self.quantizers = nn.ModuleList(
            VectorQuantize(input_dim, codebook_size, dim) for dim in dims
        )

    def forward(self, z: torch.Tensor, n_quantizers: int | None = None) -> QuantizerOutput:
        """Quantise ``z`` ``[B, D, T]``.

        In training mode a ``quantizer_dropout`` fraction of the batch uses a random number
        of levels (all ``K`` codes are still returned); in eval mode the first
        ``n_quantizers`` levels are used (default all).
        """
        batch = z.shape[0]
        if self.training:
            levels = torch.full((batch,), self.n_codebooks + 1, device=z.device)
            dropped = int(batch * self.quantizer_dropout)
            if dropped:
                levels[:dropped] = torch.randint(
                    1, self.n_codebooks + 1, (dropped,), device=z.device
                )
        else:
            n = self.n_codebooks if n_quantizers is None else n_quantizers
            levels = torch.full((batch,), n, device=z.device)
        z_q = torch.zeros_like(z)
        residual = z
        commitment = z.new_zeros(())
        codebook_loss = z.new_zeros(())
        codes, latents = [], []
        for i, quantizer in enumerate(self.quantizers):
            if not self.training and i >= int(levels[0]):
                break
            z_q_i, commitment_i, codebook_i, indices, z_e = quantizer(residual)
            mask = (i < levels).to(z.dtype)
            z_q = z_q + z_q_i * mask[:, None, None]
            residual = residual - z_q_i
            commitment = commitment + (commitment_i * mask).mean()
            codebook_loss = codebook_loss + (codebook_i * mask).mean()
            codes.append(indices)
            latents.append(z_e)
        return QuantizerOutput(
            z_q, torch.stack(codes, 1), torch.cat(latents, 1), commitment, codebook_loss
        )

    def encode(self, z: torch.Tensor, n_quantizers: int | None = None) -> torch.Tensor:
        """Codes of ``z`` ``[B, D, T]`` -> long ``[B, K', T]``, no dropout, no losses."""
        n = self.n_codebooks if n_quantizers is None else n_quantizers
        residual = z
        codes = []
        for quantizer in self.quantizers[:n]:
            z_e = quantizer.in_proj(residual)
            z_q, indices = quantizer.nearest(z_e)
            z_q = z_e + (z_q - z_e)  # the reference's straight-through rounding
            residual = residual - quantizer.out_proj(z_q)
            codes.append(indices)
        return torch.stack(codes, 1)

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """long ``[B, K', T]`` -> quantised latent ``[B, D, T]`` (sum of the ``K'`` levels)."""
        z_q = None
        for i in range(codes.shape[1]):
            quantizer = self.quantizers[i]
            z_q_i = quantizer.out_proj(quantizer.lookup(codes[:, i]))
            z_q = z_q_i if z_q is None else z_q + z_q_i
        assert z_q is not None
        return z_q
