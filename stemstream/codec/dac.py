"""Our implementation of the descript-audio-codec (DAC) generator, causal or not.

Parameter-compatible with descript-audio-codec 1.0.0 checkpoints (non-causal) and with the
causal fork used by Wu et al. 2025 (``causal_encoder`` / ``causal_decoder``; see
:mod:`stemstream.codec.networks` for the layout). Load those with
:func:`stemstream.codec.checkpoint.load_dac_checkpoint`.

Timing of the causal model (``hop`` = product of the rates):

- encoder frame ``t`` depends on input samples ``<= t * hop``, so the streaming encoder
  emits frame ``t`` as soon as sample ``t * hop`` arrives and never needs a flush;
- the decoder's raw output is ``hop - 1`` samples ahead of the frame grid (transposed
  convolutions without padding); like the reference we drop its first ``hop - 1`` samples
  (unless ``ignore_left_crop``), so decoded sample ``m`` depends on frames
  ``<= ceil(m / hop)``: the streaming decoder withholds ``hop - 1`` samples until the next
  frame (or ``flush``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from stemstream.codec.base import AudioStreamDecoder, AudioStreamEncoder, Codec, CodecError
from stemstream.codec.networks import Decoder, Encoder
from stemstream.codec.quantize import ResidualVectorQuantize
from stemstream.config import from_dict, to_dict
from stemstream.errors import ConfigError


@dataclass(frozen=True)
class DACConfig:
    """Shape of a DAC generator; field names are descript-audio-codec's ``DAC`` kwargs.

    Attributes:
        encoder_dim: channels of the first encoder conv (doubled by every block).
        encoder_rates: encoder strides; their product is the hop length.
        latent_dim: ``D``; ``None`` means ``encoder_dim * 2 ** len(encoder_rates)``.
        decoder_dim: channels of the first decoder conv (halved by every block).
        decoder_rates: decoder upsampling factors; same product as ``encoder_rates``.
        n_codebooks: ``K``, RVQ levels.
        codebook_size: entries per codebook.
        codebook_dim: factorised code dimension (one value or one per level).
        quantizer_dropout: fraction of a training batch using a random number of levels.
        sample_rate: Hz.
        causal_encoder: left-only padding in the encoder (streamable).
        causal_decoder: left-only padding, unpadded transposed convs (streamable).
        ignore_left_crop: keep the causal decoder's first ``hop - 1`` samples (the causal
            reference's option of that name; default crops them).
    """

    encoder_dim: int = 64
    encoder_rates: tuple[int, ...] = (2, 4, 8, 8)
    latent_dim: int | None = None
    decoder_dim: int = 1536
    decoder_rates: tuple[int, ...] = (8, 8, 4, 2)
    n_codebooks: int = 9
    codebook_size: int = 1024
    codebook_dim: int | tuple[int, ...] = 8
    quantizer_dropout: float = 0.0
    sample_rate: int = 44100
    causal_encoder: bool = False
    causal_decoder: bool = False
    ignore_left_crop: bool = False

    def __post_init__(self) -> None:
        if self.latent_dim is None:
            object.__setattr__(self, "latent_dim", self.encoder_dim * 2 ** len(self.encoder_rates))
        for name in ("encoder_dim", "latent_dim", "decoder_dim", "n_codebooks", "sample_rate"):
            if getattr(self, name) < 1:
                raise ConfigError(f"DACConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ConfigError(f"DACConfig.codebook_size must be >= 2, got {self.codebook_size}")
        if not self.encoder_rates or min(self.encoder_rates) < 1:
            raise ConfigError(f"DACConfig.encoder_rates must be >= 1: {self.encoder_rates}")
        if not self.decoder_rates or min(self.decoder_rates) < 1:
            raise ConfigError(f"DACConfig.decoder_rates must be >= 1: {self.decoder_rates}")
        if math.prod(self.encoder_rates) != math.prod(self.decoder_rates):
            raise ConfigError(
                f"encoder_rates {self.encoder_rates} and decoder_rates {self.decoder_rates} "
                "must have the same product (the hop length)"
            )
        if self.decoder_dim % 2 ** len(self.decoder_rates):
            raise ConfigError(
                f"decoder_dim {self.decoder_dim} must be divisible by 2**{len(self.decoder_rates)}"
            )
        dims = self.codebook_dims
        if len(dims) != self.n_codebooks or min(dims) < 1:
            raise ConfigError(
                f"codebook_dim {self.codebook_dim} must be >= 1 and give one value per codebook"
            )
        if not 0.0 <= self.quantizer_dropout <= 1.0:
            raise ConfigError(f"quantizer_dropout must be in [0, 1], got {self.quantizer_dropout}")

    @property
    def hop_length(self) -> int:
        """Samples per frame."""
        return math.prod(self.encoder_rates)

    @property
    def frame_rate(self) -> float:
        """Frames per second (Hz)."""
        return self.sample_rate / self.hop_length

    @property
    def codebook_dims(self) -> tuple[int, ...]:
        """The factorised dimension of each level."""
        if isinstance(self.codebook_dim, int):
            return (self.codebook_dim,) * self.n_codebooks
        return tuple(self.codebook_dim)

    @property
    def output_offset(self) -> int:
        """Raw decoder samples dropped at the start (``hop - 1`` for the causal decoder)."""
        if self.causal_decoder and not self.ignore_left_crop:
            return self.hop_length - 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe data; :meth:`from_dict` inverts it."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DACConfig:
        """Build from :meth:`to_dict` data; unknown keys raise :class:`ConfigError`."""
        return from_dict(cls, data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DACConfig:
        """A named preset (see :data:`DAC_PRESETS`), optionally with fields replaced."""
        if name not in DAC_PRESETS:
            raise ConfigError(f"unknown DAC preset {name!r}; known: {', '.join(DAC_PRESETS)}")
        return dataclasses.replace(DAC_PRESETS[name], **overrides)


DAC_PRESETS: dict[str, DACConfig] = {
    # Tests: about 11k parameters, hop 10, odd and even strides.
    "tiny": DACConfig(
        encoder_dim=4, encoder_rates=(2, 5), latent_dim=16, decoder_dim=16,
        decoder_rates=(5, 2), n_codebooks=4, codebook_size=32, codebook_dim=4,
        sample_rate=16000, causal_encoder=True, causal_decoder=True,
    ),
    # Official descript-audio-codec releases (weights_16khz.pth, weights_24khz.pth, weights.pth).
    "dac_16khz": DACConfig(
        encoder_rates=(2, 4, 5, 8), latent_dim=1024, decoder_rates=(8, 5, 4, 2),
        n_codebooks=12, sample_rate=16000,
    ),
    "dac_24khz": DACConfig(
        encoder_rates=(2, 4, 5, 8), latent_dim=1024, decoder_rates=(8, 5, 4, 2),
        n_codebooks=32, sample_rate=24000,
    ),
    "dac_44khz": DACConfig(latent_dim=1024, n_codebooks=9, sample_rate=44100),
    # The paper's causal DAC: 32 kHz, hop 640 (50 Hz), codebooks of 4096, latent 1024.
    # (Its checkpoint carries its own kwargs; load_dac_checkpoint reads those.)
    "causal_32khz": DACConfig(
        encoder_rates=(2, 4, 8, 10), latent_dim=1024, decoder_rates=(10, 8, 4, 2),
        n_codebooks=9, codebook_size=4096, sample_rate=32000,
        causal_encoder=True, causal_decoder=True,
    ),
}  # fmt: skip


class DACOutput(NamedTuple):
    """What :meth:`DAC.forward` (training) returns.

    Attributes:
        audio: ``[B, 1, N]`` reconstruction, cropped to the input length.
        z: ``[B, D, T]`` quantised latent.
        codes: long ``[B, K, T]``.
        latents: ``[B, K * d, T]`` projected latents.
        commitment_loss: scalar.
        codebook_loss: scalar.
    """

    audio: torch.Tensor
    z: torch.Tensor
    codes: torch.Tensor
    latents: torch.Tensor
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor


class DAC(Codec):
    """DAC generator: causal-conv encoder, factorised RVQ, transposed-conv decoder."""

    def __init__(self, config: DACConfig) -> None:
        super().__init__()
        self.config = config
        assert config.latent_dim is not None
        self.encoder = Encoder(
            config.encoder_dim, config.encoder_rates, config.latent_dim, config.causal_encoder
        )
        self.quantizer = ResidualVectorQuantize(
            config.latent_dim,
            config.n_codebooks,
            config.codebook_size,
            config.codebook_dims,
            config.quantizer_dropout,
        )
        self.decoder = Decoder(
            config.latent_dim, config.decoder_dim, config.decoder_rates, config.causal_decoder
        )

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        return self.config.hop_length

    @property
    def num_codebooks(self) -> int:
        return self.config.n_codebooks

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def latent_dim(self) -> int:
        assert self.config.latent_dim is not None
        return self.config.latent_dim

    def config_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def forward(self, wave: torch.Tensor) -> DACOutput:
        """Training pass: encode (with quantizer dropout in training mode) and decode.

        Args:
            wave: ``[B, 1, N]``.

        Returns:
            :class:`DACOutput`; ``audio`` is ``[B, 1, N]``.
        """
        length = wave.shape[-1]
        wave = F.pad(wave, (0, (-length) % self.hop_length))
        quantized = self.quantizer(self.encoder(wave))
        audio = self.decode_latent(quantized.z_q)[..., :length]
        return DACOutput(audio, *quantized)

    def decode_latent(self, z: torch.Tensor) -> torch.Tensor:
        """Quantised (or continuous) latent ``[B, D, T]`` -> audio ``[B, 1, T * hop]``.

        The causal decoder's surplus is trimmed (first ``output_offset`` samples, and the
        end); a non-causal decoder with odd rates comes out short and is zero-padded.
        """
        total = z.shape[-1] * self.hop_length
        offset = self.config.output_offset
        audio = self.decoder(z)[..., offset : offset + total]
        return F.pad(audio, (0, total - audio.shape[-1]))

    def _encode(self, wave: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        return self.quantizer.encode(self.encoder(wave), num_codebooks)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_latent(self.quantizer.from_codes(codes))

    def _embed(self, codes: torch.Tensor) -> torch.Tensor:
        return self.quantizer.from_codes(codes)

    def streaming_encoder(self, num_codebooks: int | None = None) -> DACStreamingEncoder:
        if not self.config.causal_encoder:
            raise CodecError("streaming encoding needs a DAC with causal_encoder=True")
        return DACStreamingEncoder(self, num_codebooks)

    def streaming_decoder(self) -> DACStreamingDecoder:
        if not self.config.causal_decoder:
            raise CodecError("streaming decoding needs a DAC with causal_decoder=True")
        return DACStreamingDecoder(self)


class DACStreamingEncoder(AudioStreamEncoder):
    """Causal DAC encoder, block by block; frame ``t`` is emitted with sample ``t * hop``.

    State: per causal conv its pending input samples (``encoder.<module path>``), per
    ``LeftPad`` a started flag, and ``meta.batch_size``.
    """

    codec: DAC

    def _known_key(self, key: str) -> bool:
        return key.startswith(("meta.", "encoder."))

    def _step(self, block: torch.Tensor) -> torch.Tensor:
        z = self.codec.encoder.stream_step(block, self._state, "encoder")
        if z.shape[-1] == 0:
            return block.new_zeros(block.shape[0], self.num_codebooks, 0, dtype=torch.long)
        return self.codec.quantizer.encode(z, self.num_codebooks)

    def _flush(self, batch_size: int) -> torch.Tensor:
        # Offline encoding pads the end with zeros, but no causal frame ever sees them.
        reference = self.codec.quantizer.quantizers[0].codebook.weight
        return torch.zeros(
            batch_size, self.num_codebooks, 0, dtype=torch.long, device=reference.device
        )


class DACStreamingDecoder(AudioStreamDecoder):
    """Causal DAC decoder, frame by frame, overlap-adding its transposed convolutions.

    Emits ``t * hop - offset`` samples for the first ``t`` frames (``offset = hop - 1``
    unless ``ignore_left_crop``); :meth:`flush` emits the last ``offset``.
    """

    codec: DAC

    @property
    def latency_samples(self) -> int:
        return self.codec.config.output_offset

    def _known_key(self, key: str) -> bool:
        return key.startswith(("meta.", "decoder."))

    def _step(self, codes: torch.Tensor) -> torch.Tensor:
        frames = codes.shape[-1]
        if frames == 0:
            reference = self.codec.quantizer.quantizers[0].codebook.weight
            return reference.new_zeros(codes.shape[0], 1, 0)
        z = self.codec.quantizer.from_codes(codes)
        audio = self.codec.decoder.stream_step(z, self._state, "decoder")
        self._set_counter("frames_in", self._counter("frames_in") + frames)
        return self._emit(audio)

    def _emit(self, audio: torch.Tensor) -> torch.Tensor:
        """Drop the first ``output_offset`` samples of the stream; count what goes out."""
        dropped = self._counter("dropped")
        drop = min(self.codec.config.output_offset - dropped, audio.shape[-1])
        if drop:
            audio = audio[..., drop:]
            self._set_counter("dropped", dropped + drop)
        self._set_counter("samples_out", self._counter("samples_out") + audio.shape[-1])
        return audio

    def _flush(self, batch_size: int) -> torch.Tensor:
        tail = self.codec.decoder.stream_flush(self._state, "decoder")
        reference = self.codec.quantizer.quantizers[0].codebook.weight
        if tail is None:
            tail = reference.new_zeros(batch_size, 1, 0)
        tail = self._emit(tail)
        owed = self._counter("frames_in") * self.codec.hop_length - (
            self._counter("samples_out") - tail.shape[-1]
        )
        tail = tail[..., :owed]
        return F.pad(tail, (0, owed - tail.shape[-1]))
