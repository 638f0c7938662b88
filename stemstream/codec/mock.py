"""A fast, deterministic, untrained codec with the full :class:`Codec` interface.

For testing the layers above the codec (models, streaming engine, CLI, server) without
weights, like magenta-realtime's ``MockSpectroStream``:

- encode: each frame's ``hop`` samples -> fixed random projection -> ``tanh`` -> residual
  nearest-neighbour quantisation against fixed random codebooks (level ``k`` scaled by
  ``2**-k``). Frame ``t`` depends on samples ``[t * hop, (t + 1) * hop)`` only.
- decode: every code ``c`` of level ``k`` is a sinusoid of integer frequency ``f[k, c]`` Hz
  and amplitude ``0.4 * 2**-k``, evaluated at the absolute sample index (exact integer phase
  arithmetic, so streamed and offline audio are bit-identical and long streams do not drift).
  Sample ``n`` depends on frame ``n // hop`` only.

Everything is drawn from a ``torch.Generator`` seeded with ``seed``: two mocks with the same
config are identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from stemstream.codec.base import AudioStreamDecoder, AudioStreamEncoder, Codec
from stemstream.config import from_dict, to_dict
from stemstream.errors import ConfigError


@dataclass(frozen=True)
class MockCodecConfig:
    """Shape of a :class:`MockCodec` (defaults: 16 kHz, 50 Hz, 4 x 1024 codes)."""

    sample_rate: int = 16000
    hop_length: int = 320
    num_codebooks: int = 4
    codebook_size: int = 1024
    latent_dim: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("sample_rate", "hop_length", "num_codebooks", "latent_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"MockCodecConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ConfigError(
                f"MockCodecConfig.codebook_size must be >= 2, got {self.codebook_size}"
            )
        if self.sample_rate < 200:
            raise ConfigError(f"MockCodecConfig.sample_rate must be >= 200, got {self.sample_rate}")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MockCodecConfig:
        return from_dict(cls, data)


class MockCodec(Codec):
    """Random-projection RVQ encoder and sum-of-sinusoids decoder (causal, streamable)."""

    projection: torch.Tensor
    codebooks: torch.Tensor
    frequencies: torch.Tensor
    phases: torch.Tensor
    amplitudes: torch.Tensor

    def __init__(self, config: MockCodecConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MockCodecConfig()
        gen = torch.Generator().manual_seed(config.seed)
        dim, levels, size = config.latent_dim, config.num_codebooks, config.codebook_size
        scales = 0.5 ** torch.arange(levels, dtype=torch.float32)
        self.register_buffer(
            "projection",
            torch.randn(dim, config.hop_length, generator=gen) * 4.0 / math.sqrt(config.hop_length),
        )
        self.register_buffer(
            "codebooks",
            (torch.rand(levels, size, dim, generator=gen) * 2 - 1) * scales[:, None, None],
        )
        nyquist_margin = config.sample_rate // 2 - 40
        self.register_buffer(
            "frequencies", torch.randint(40, nyquist_margin, (levels, size), generator=gen)
        )
        self.register_buffer("phases", torch.rand(levels, size, generator=gen) * 2 * math.pi)
        self.register_buffer("amplitudes", 0.4 * scales)

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def num_codebooks(self) -> int:
        return self.config.num_codebooks

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def _encode(self, wave: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        batch = wave.shape[0]
        frames = wave.reshape(batch, -1, self.hop_length)  # [B, T, hop]
        residual = torch.tanh(frames @ self.projection.t())  # [B, T, D]
        codes = []
        for level in range(num_codebooks):
            codebook = self.codebooks[level]  # [C, D]
            # Exact pairwise distances: the same codes whatever the block length.
            dist = torch.cdist(
                residual,
                codebook[None].expand(batch, -1, -1),
                compute_mode="donot_use_mm_for_euclid_dist",
            )
            indices = dist.argmin(-1)  # [B, T]
            residual = residual - codebook[indices]
            codes.append(indices)
        return torch.stack(codes, 1)

    def _embed(self, codes: torch.Tensor) -> torch.Tensor:
        latent = sum(self.codebooks[k][codes[:, k]] for k in range(codes.shape[1]))
        return latent.transpose(1, 2)  # [B, T, D] -> [B, D, T]

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.synthesize(codes, first_frame=0)

    def synthesize(self, codes: torch.Tensor, first_frame: int) -> torch.Tensor:
        """Audio of validated codes ``[B, K', T]`` whose first frame has index
        ``first_frame`` in the stream -> ``[B, 1, T * hop]``."""
        batch, levels, frames = codes.shape
        hop, rate = self.hop_length, self.sample_rate
        start = first_frame * hop
        sample = torch.arange(start, start + frames * hop, device=codes.device).reshape(frames, hop)
        wave = torch.zeros(batch, frames, hop, dtype=self.phases.dtype, device=codes.device)
        for k in range(levels):
            freq = self.frequencies[k][codes[:, k]]  # [B, T] integer Hz
            cycles = (freq[..., None] * (sample % rate)) % rate  # exact integer phase
            angle = cycles.to(wave.dtype) * (2 * math.pi / rate)
            wave = wave + self.amplitudes[k] * torch.sin(
                angle + self.phases[k][codes[:, k]][..., None]
            )
        return wave.reshape(batch, 1, frames * hop)

    def streaming_encoder(self, num_codebooks: int | None = None) -> MockStreamingEncoder:
        return MockStreamingEncoder(self, num_codebooks)

    def streaming_decoder(self) -> MockStreamingDecoder:
        return MockStreamingDecoder(self)


class MockStreamingEncoder(AudioStreamEncoder):
    """Buffers samples until a frame is complete; ``flush`` zero-pads the last one.

    State: ``buffer`` (samples of the unfinished frame, ``[B, 1, r]``), ``meta.batch_size``.
    """

    codec: MockCodec

    def _known_key(self, key: str) -> bool:
        return key == "buffer" or key.startswith("meta.")

    def _step(self, block: torch.Tensor) -> torch.Tensor:
        past = self._state.get("buffer")
        if past is not None:
            block = torch.cat([past, block], dim=-1)
        hop = self.codec.hop_length
        ready = block.shape[-1] // hop * hop
        self._state["buffer"] = block[..., ready:]
        if ready == 0:
            return block.new_zeros(block.shape[0], self.num_codebooks, 0, dtype=torch.long)
        return self.codec._encode(block[..., :ready], self.num_codebooks)

    def _flush(self, batch_size: int) -> torch.Tensor:
        rest = self._state.get("buffer")
        if rest is None or rest.shape[-1] == 0:
            device = self.codec.projection.device
            return torch.zeros(batch_size, self.num_codebooks, 0, dtype=torch.long, device=device)
        rest = F.pad(rest, (0, self.codec.hop_length - rest.shape[-1]))
        return self.codec._encode(rest, self.num_codebooks)


class MockStreamingDecoder(AudioStreamDecoder):
    """Synthesises each frame as it arrives (no latency). State: ``meta.frames_in``."""

    codec: MockCodec

    def _step(self, codes: torch.Tensor) -> torch.Tensor:
        first = self._counter("frames_in")
        self._set_counter("frames_in", first + codes.shape[-1])
        return self.codec.synthesize(codes, first_frame=first)

    def _flush(self, batch_size: int) -> torch.Tensor:
        return self.codec.phases.new_zeros(batch_size, 1, 0)
