"""A frame-rate causal codec with an inverse-STFT decoder (the shipped default's design).

Why: on a 2-core CPU a waveform-domain DAC trains too slowly to learn pitch
(CODEC-CALIBRATION.md, design 1). Here every layer runs at the 50 Hz frame rate:

* **Encoder** — causal STFT (window of ``enc_n_fft`` samples *ending* at the end of frame ``t``,
  hop = one frame): log-magnitude plus magnitude-weighted cos/sin of the instantaneous-frequency
  deviation (phase advance between frames minus the bin-centre advance), a 1x1 conv, causal
  ConvNeXt blocks (depthwise kernels padded on the left), a 1x1 conv to the latent.
* **Quantiser** — :class:`~stemstream.codec.ema_rvq.EMAResidualVQ`.
* **Decoder** — causal ConvNeXt blocks -> per frame ``dec_n_fft // 2 + 1`` log-magnitudes and
  bounded phase deviations. The phase is *integrated*: bin-centre advance plus the deviation,
  accumulated over frames in float64 and wrapped at every step (absolute phase snaps steady
  tones to multiples of the frame rate; float32 accumulation drifts in long streams).
  An inverse real FFT with a sqrt-Hann window is overlap-added with hop = one frame: output
  samples of frame ``t`` are the first half of frame ``t``'s window plus the second half of
  frame ``t-1``'s, so frame ``t``'s audio is final as soon as frame ``t`` is decoded.

Output frame ``t`` depends on input samples ``< (t + 1) * hop`` only, so the codec's algorithmic
latency is one frame (20 ms at 50 Hz) plus the streaming block size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stemstream.codec.base import AudioStreamDecoder, AudioStreamEncoder, Codec, CodecError
from stemstream.codec.ema_rvq import EMAResidualVQ
from stemstream.codec.layers import PointwiseConv1d


@dataclass(frozen=True)
class FrameCodecConfig:
    """Hyper-parameters; ``tiny`` for tests, ``cpu16k`` for the shipped default."""

    sample_rate: int = 16000
    hop_length: int = 320
    enc_n_fft: int = 1280
    dec_n_fft: int = 640
    channels: int = 192
    enc_blocks: int = 4
    dec_blocks: int = 5
    kernel_size: int = 7
    latent_dim: int = 128
    num_codebooks: int = 8
    codebook_size: int = 1024
    codebook_dim: int = 8
    ema_decay: float = 0.99
    quantizer_dropout: float = 0.5

    def __post_init__(self):
        if self.enc_n_fft < self.hop_length or self.enc_n_fft % self.hop_length:
            raise CodecError("enc_n_fft must be a multiple of hop_length")
        if self.dec_n_fft != 2 * self.hop_length:
            raise CodecError("dec_n_fft must be 2 * hop_length (50% overlap-add)")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrameCodecConfig:
        """Inverse of :meth:`FrameCodec.config_dict`; unknown keys raise ConfigError."""
        from stemstream.config import from_dict

        return from_dict(cls, data)

    @classmethod
    def preset(cls, name: str) -> FrameCodecConfig:
        presets = {
            "tiny": cls(
                channels=32,
                enc_blocks=1,
                dec_blocks=1,
                latent_dim=16,
                num_codebooks=4,
                codebook_size=64,
                codebook_dim=4,
            ),
            "cpu16k": cls(),
        }
        if name not in presets:
            raise CodecError(f"unknown FrameCodec preset {name!r}; choose from {sorted(presets)}")
        return presets[name]


_UNFOLD_MAX_FRAMES = 64
# Frames per call of a compiled streaming trunk (stemstream.codec.compiled); longer inputs run
# in pieces.
ROUTE_MAX_FRAMES = 32


class CausalConvNeXt(nn.Module):
    """Depthwise causal conv over frames -> LayerNorm -> MLP (x4) -> layer scale, residual."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.context = kernel_size - 1
        self.dwconv = nn.Conv1d(channels, channels, kernel_size, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, 4 * channels), nn.GELU(), nn.Linear(4 * channels, channels)
        )
        self.scale = nn.Parameter(torch.full((channels,), 0.1))

    def forward(
        self, x: torch.Tensor, history: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [B, C, T]`` with ``history [B, C, kernel-1]`` (zeros when None) ->
        ``(y [B, C, T], new history)``."""
        if history is None:
            history = x.new_zeros(x.shape[0], x.shape[1], self.context)
        padded = torch.cat([history, x], dim=-1)
        if padded.shape[-1] <= _UNFOLD_MAX_FRAMES and not torch.compiler.is_exporting():
            # For a few frames (streaming, training crops) multiply-and-sum over the kernel
            # is ~6x faster than conv1d on CPU, whose per-call set-up dominates there. An export
            # (stemstream.codec.compiled) keeps the convolution: one node, any number of frames.
            taps = padded.unfold(-1, self.context + 1, 1)  # [B, C, T, k]
            weight = self.dwconv.weight[:, 0]  # [C, k]
            h = (taps * weight[:, None, :]).sum(-1) + self.dwconv.bias[:, None]
            h = h.transpose(1, 2)
        else:
            h = self.dwconv(padded).transpose(1, 2)
        h = self.mlp(self.norm(h)) * self.scale
        return x + h.transpose(1, 2), padded[..., padded.shape[-1] - self.context :]


def _wrap(phase: torch.Tensor) -> torch.Tensor:
    return torch.remainder(phase + math.pi, 2 * math.pi) - math.pi


class FrameCodec(Codec):
    """See the module docstring. Build with ``FrameCodec(FrameCodecConfig.preset("tiny"))``."""

    def __init__(self, config: FrameCodecConfig | None = None):
        super().__init__()
        self.config = config = config or FrameCodecConfig()
        enc_bins = config.enc_n_fft // 2 + 1
        dec_bins = config.dec_n_fft // 2 + 1
        self.register_buffer("enc_window", torch.hann_window(config.enc_n_fft), persistent=False)
        self.register_buffer(
            "dec_window", torch.hann_window(config.dec_n_fft).sqrt(), persistent=False
        )
        advance = 2 * math.pi * torch.arange(enc_bins) * config.hop_length / config.enc_n_fft
        self.register_buffer(
            "enc_advance", torch.polar(torch.ones(enc_bins), -advance), persistent=False
        )
        dec_advance = 2 * math.pi * torch.arange(dec_bins) * config.hop_length / config.dec_n_fft
        self.register_buffer("dec_advance", dec_advance.double(), persistent=False)

        self.enc_in = PointwiseConv1d(3 * enc_bins, config.channels)
        self.enc_blocks = nn.ModuleList(
            [CausalConvNeXt(config.channels, config.kernel_size) for _ in range(config.enc_blocks)]
        )
        self.enc_norm = nn.LayerNorm(config.channels)
        self.enc_out = PointwiseConv1d(config.channels, config.latent_dim)
        self.quantizer = EMAResidualVQ(
            config.latent_dim,
            config.num_codebooks,
            config.codebook_size,
            config.codebook_dim,
            config.ema_decay,
            config.quantizer_dropout,
        )
        self.dec_in = PointwiseConv1d(config.latent_dim, config.channels)
        self.dec_blocks = nn.ModuleList(
            [CausalConvNeXt(config.channels, config.kernel_size) for _ in range(config.dec_blocks)]
        )
        self.dec_norm = nn.LayerNorm(config.channels)
        self.dec_out = PointwiseConv1d(config.channels, 2 * dec_bins)
        for conv in (self.enc_in, self.enc_out, self.dec_in, self.dec_out):
            nn.init.zeros_(conv.bias)
        # compiled one-frame trunks for the streaming encoder and decoder
        # (stemstream.codec.compiled); None = eager
        self.trunk_route = None

    # ------------------------------------------------------------------ protocol properties
    sample_rate = property(lambda self: self.config.sample_rate)
    hop_length = property(lambda self: self.config.hop_length)
    num_codebooks = property(lambda self: self.config.num_codebooks)
    codebook_size = property(lambda self: self.config.codebook_size)
    latent_dim = property(lambda self: self.config.latent_dim)

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.config)

    # ------------------------------------------------------------------------- encoder
    def _features(
        self, frames: torch.Tensor, prev_spec: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``frames [B, T, n_fft]`` (windows ending at each frame end) -> features
        ``[B, 3F, T]`` and the last complex spectrum ``[B, F]``."""
        spec = torch.fft.rfft(frames * self.enc_window, dim=-1)  # [B, T, F]
        if prev_spec is None:
            prev_spec = torch.zeros_like(spec[:, 0])
        previous = torch.cat([prev_spec[:, None], spec[:, :-1]], dim=1)
        rotation = spec * previous.conj() * self.enc_advance
        deviation = rotation / (rotation.abs() + 1e-7)
        magnitude = spec.abs()
        weight = torch.log1p(10 * magnitude)
        feats = torch.cat(
            [torch.log(magnitude + 1e-5), weight * deviation.real, weight * deviation.imag], dim=-1
        )
        return feats.transpose(1, 2), spec[:, -1]

    def _encoder_trunk(
        self, feats: torch.Tensor, histories: list | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.enc_in(feats)
        new = []
        for i, block in enumerate(self.enc_blocks):
            h, hist = block(h, None if histories is None else histories[i])
            new.append(hist)
        h = self.enc_norm(h.transpose(1, 2)).transpose(1, 2)
        return self.enc_out(h), new

    def latents(self, wave: torch.Tensor) -> torch.Tensor:
        """Continuous encoder output ``[B, D, T]`` for ``[B, 1, T*hop]`` audio."""
        cfg = self.config
        padded = F.pad(wave[:, 0], (cfg.enc_n_fft - cfg.hop_length, 0))
        frames = padded.unfold(-1, cfg.enc_n_fft, cfg.hop_length)
        feats, _ = self._features(frames, None)
        return self._encoder_trunk(feats, None)[0]

    def _encode(self, wave: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        return self.quantizer.encode(self.latents(wave), num_codebooks)

    def _embed(self, codes: torch.Tensor) -> torch.Tensor:
        return self.quantizer.embed(codes)

    # ------------------------------------------------------------------------- decoder
    def _decoder_trunk(
        self, latent: torch.Tensor, histories: list | None
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        h = self.dec_in(latent)
        new = []
        for i, block in enumerate(self.dec_blocks):
            h, hist = block(h, None if histories is None else histories[i])
            new.append(hist)
        h = self.dec_out(self.dec_norm(h.transpose(1, 2)).transpose(1, 2))
        log_mag, dev = h.chunk(2, dim=1)  # [B, F, T] each
        return log_mag.clamp(max=6.0), math.pi * torch.tanh(dev), new

    def _synthesise(
        self,
        log_mag: torch.Tensor,
        deviation: torch.Tensor,
        phase0: torch.Tensor | None,
        tail: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Integrate phase, inverse FFT, overlap-add. Returns ``(audio [B, T*hop], last
        phase [B, F] float64, tail [B, hop])``."""
        hop = self.config.hop_length
        batch, _, frames = log_mag.shape
        step = deviation.double() + self.dec_advance[None, :, None]
        if phase0 is None:
            phase0 = step.new_zeros(batch, step.shape[1])
        # Sum in float64 then wrap: equal (to ~1e-12) to wrapping after every frame.
        phase = _wrap(phase0[:, :, None] + torch.cumsum(step, dim=-1))
        spec = torch.polar(torch.exp(log_mag), phase.to(log_mag.dtype))
        chunks = torch.fft.irfft(spec.transpose(1, 2), n=self.config.dec_n_fft, dim=-1)
        chunks = chunks * self.dec_window  # [B, T, 2*hop]
        if tail is None:
            tail = chunks.new_zeros(batch, hop)
        previous_second = torch.cat([tail[:, None], chunks[:, :-1, hop:]], dim=1)
        audio = (chunks[:, :, :hop] + previous_second).reshape(batch, frames * hop)
        return audio, phase[:, :, -1], chunks[:, -1, hop:]

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Quantised latent ``[B, D, T]`` -> audio ``[B, 1, T*hop]``."""
        return self.decode_with_magnitudes(latent)[0]

    def decode_with_magnitudes(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`decode_latent`, also returning the decoder's log-magnitudes
        ``[B, F, T]`` (for :meth:`frame_log_magnitudes` targets)."""
        log_mag, dev, _ = self._decoder_trunk(latent, None)
        return self._synthesise(log_mag, dev, None, None)[0][:, None], log_mag

    def frame_log_magnitudes(self, wave: torch.Tensor) -> torch.Tensor:
        """The decoder's ideal output for ``[B, 1, T*hop]`` audio: log-magnitudes ``[B, F, T]``
        of the sqrt-Hann frames that overlap-add places at each output frame (frame ``t``
        covers samples ``[t*hop, (t+2)*hop)``, so the last one reads ``hop`` zeros)."""
        hop, n_fft = self.config.hop_length, self.config.dec_n_fft
        frames = F.pad(wave[:, 0], (0, n_fft - hop)).unfold(-1, n_fft, hop)
        spec = torch.fft.rfft(frames * self.dec_window, dim=-1)
        return torch.log(spec.abs().clamp_min(1e-5)).transpose(1, 2)

    def token_modules(self) -> list[nn.Module]:
        return [self.enc_in, self.enc_blocks, self.enc_norm, self.enc_out, self.quantizer]

    def decode_at_depths(
        self, codes: torch.Tensor, depths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode item ``b`` of long ``[B, K, T]`` codes from its first ``depths[b]`` levels
        only. Returns :meth:`decode_with_magnitudes`'s pair."""
        return self.decode_with_magnitudes(self.quantizer.embed(codes, depths))

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decode_latent(self.quantizer.embed(codes))

    # ----------------------------------------------------------------------- streaming
    def streaming_encoder(self, num_codebooks: int | None = None) -> FrameStreamingEncoder:
        return FrameStreamingEncoder(self, num_codebooks)

    def streaming_decoder(self) -> FrameStreamingDecoder:
        return FrameStreamingDecoder(self)


def _in_blocks(step, inputs: torch.Tensor, histories: list | None, blocks: int,
               config: FrameCodecConfig) -> tuple:
    """Run a compiled trunk (:mod:`stemstream.codec.compiled`) of ``blocks`` convolution
    blocks over the frames of ``inputs [B, *, T]``, at most ``ROUTE_MAX_FRAMES`` per call:
    returns its outputs over all frames (one tensor, or a tuple when it has several) and the
    final histories as a list (``None`` histories start at zero, as in the eager trunk)."""
    if histories is None:
        shape = (blocks, inputs.shape[0], config.channels, config.kernel_size - 1)
        stacked = torch.zeros(shape, device=inputs.device)
    else:
        stacked = torch.stack(histories)
    outputs = []
    for start in range(0, inputs.shape[-1], ROUTE_MAX_FRAMES):
        *out, stacked = step(inputs[..., start : start + ROUTE_MAX_FRAMES].contiguous(), stacked)
        outputs.append(out)
    if len(outputs) == 1:
        joined = outputs[0]
    else:
        joined = [torch.cat(parts, dim=-1) for parts in zip(*outputs, strict=True)]
    return (joined[0] if len(joined) == 1 else tuple(joined)), list(stacked.unbind(0))


def _stacked(streams: list, key: str, zeros) -> torch.Tensor | None:
    """The ``key`` state of every stream stacked along the batch, ``zeros(rows)`` for a
    stream that has none yet (the streaming code treats a missing state as zeros); ``None``
    when no stream has it."""
    if not any(key in s._state for s in streams):
        return None
    return torch.cat([s._state[key] if key in s._state else zeros(s._batch_size())
                      for s in streams])


def _unstack(streams: list, updates: dict[str, torch.Tensor]) -> None:
    """Give each stream its rows of the batched new states."""
    at = 0
    for stream in streams:
        rows = stream._batch_size()
        for key, value in updates.items():
            stream._state[key] = value[at : at + rows]
        at += rows


def encode_streams(encoders: list[FrameStreamingEncoder],
                   windows: list[torch.Tensor]) -> list[torch.Tensor]:
    """The codes ``[B_i, K', T]`` of each encoder's analysis windows ``[B_i, T, n_fft]`` (same
    ``T >= 1``, from :meth:`FrameStreamingEncoder.frame`), computed for all of them as one
    batch (many sessions' encoders, one forward); each encoder's state advances exactly as
    alone."""
    codec, num_codebooks = encoders[0].codec, encoders[0].num_codebooks
    cfg, blocks = codec.config, len(codec.enc_blocks)
    joined = torch.cat(windows)
    bins = cfg.enc_n_fft // 2 + 1
    prev = _stacked(encoders, "prev_spec", lambda rows: joined.new_zeros(rows, bins, 2))
    feats, last = codec._features(joined, None if prev is None else torch.view_as_complex(prev))
    histories = _histories(encoders, blocks, cfg, joined)
    route = codec.trunk_route
    if route is not None and route.num_codebooks == num_codebooks:
        codes, new = _in_blocks(route.encode, feats, histories, blocks, cfg)
    else:
        latent, new = codec._encoder_trunk(feats, histories)
        codes = codec.quantizer.encode(latent, num_codebooks)
    _unstack(encoders, {**{f"hist{i}": h for i, h in enumerate(new)},
                        "prev_spec": torch.view_as_real(last).contiguous()})
    return list(codes.split([e._batch_size() for e in encoders]))


def decode_streams(decoders: list[FrameStreamingDecoder],
                   codes: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each decoder's :meth:`~FrameStreamingDecoder.step` of its codes ``[B_i, K', T]`` (same
    ``K'`` and ``T >= 1``), computed for all of them as one batch; each decoder's state
    advances exactly as alone."""
    codec = decoders[0].codec
    cfg, blocks = codec.config, len(codec.dec_blocks)
    for decoder, each in zip(decoders, codes, strict=True):
        decoder._check_batch(each.shape[0])
    joined = torch.cat(codes).long()
    histories = _histories(decoders, blocks, cfg, codec.dec_window)
    route = codec.trunk_route
    if route is not None and route.num_codebooks == joined.shape[1]:
        (log_mag, dev), new = _in_blocks(route.decode, joined, histories, blocks, cfg)
    else:
        latent = codec.quantizer.embed(joined)
        log_mag, dev, new = codec._decoder_trunk(latent, histories)
    bins = log_mag.shape[1]
    phase = _stacked(decoders, "phase",
                     lambda rows: torch.zeros(rows, bins, dtype=torch.float64))
    tail = _stacked(decoders, "tail", lambda rows: log_mag.new_zeros(rows, cfg.hop_length))
    audio, phase, tail = codec._synthesise(log_mag, dev, phase, tail)
    _unstack(decoders, {**{f"hist{i}": h for i, h in enumerate(new)}, "phase": phase,
                        "tail": tail})
    return list(audio[:, None].split([d._batch_size() for d in decoders]))


def _histories(streams: list, blocks: int, cfg: FrameCodecConfig,
               like: torch.Tensor) -> list[torch.Tensor] | None:
    """Every block's convolution history over the streams (``None`` when none has one)."""
    stacked = [_stacked(streams, f"hist{i}", lambda rows: like.new_zeros(
        rows, cfg.channels, cfg.kernel_size - 1)) for i in range(blocks)]
    return None if stacked[0] is None else stacked


class FrameStreamingEncoder(AudioStreamEncoder):
    """Buffers samples; emits a frame when its last sample arrives."""

    codec: FrameCodec

    def _known_key(self, key: str) -> bool:
        return super()._known_key(key) or key in ("audio", "prev_spec") or key.startswith("hist")

    def _step(self, block: torch.Tensor) -> torch.Tensor:
        windows = self._frame(block)
        if windows.shape[1] == 0:
            return torch.zeros(block.shape[0], self.num_codebooks, 0, dtype=torch.long,
                               device=block.device)
        return encode_streams([self], [windows])[0]

    @classmethod
    def _step_many(cls, encoders: list, blocks: list) -> list[torch.Tensor]:
        windows = [e.frame(b) for e, b in zip(encoders, blocks, strict=True)]
        out: list[torch.Tensor | None] = [None] * len(encoders)
        for frames in {w.shape[1] for w in windows}:  # one batch per frame count
            group = [i for i, w in enumerate(windows) if w.shape[1] == frames]
            if frames == 0:
                for i in group:
                    out[i] = torch.zeros(windows[i].shape[0], encoders[i].num_codebooks, 0,
                                         dtype=torch.long, device=windows[i].device)
                continue
            codes = encode_streams([encoders[i] for i in group], [windows[i] for i in group])
            for i, each in zip(group, codes, strict=True):
                out[i] = each
        return out

    def frame(self, block: torch.Tensor) -> torch.Tensor:
        """The first half of :meth:`step`, for :func:`encode_streams`: buffer ``block``
        ``[B, 1, n]`` and return the analysis windows of the frames it completes
        ``[B, T, n_fft]`` (``T`` may be 0)."""
        block = self.codec.check_wave(block, what="block", allow_empty=True)
        self._check_batch(block.shape[0])
        return self._frame(block)

    def _frame(self, block: torch.Tensor) -> torch.Tensor:
        cfg = self.codec.config
        context = cfg.enc_n_fft - cfg.hop_length
        audio = self._state.get("audio")
        if audio is None:
            audio = block.new_zeros(block.shape[0], context)
        audio = torch.cat([audio, block[:, 0]], dim=-1)
        frames = (audio.shape[-1] - context) // cfg.hop_length
        used = context + frames * cfg.hop_length
        self._state["audio"] = audio[:, used - context :]
        if frames == 0:
            return audio.new_zeros(audio.shape[0], 0, cfg.enc_n_fft)
        return audio[:, :used].unfold(-1, cfg.enc_n_fft, cfg.hop_length)

    def _flush(self, batch_size: int) -> torch.Tensor:
        cfg = self.codec.config
        audio = self._state.get("audio")
        pending = 0 if audio is None else audio.shape[-1] - (cfg.enc_n_fft - cfg.hop_length)
        if pending <= 0:
            device = self.codec.enc_window.device
            return torch.zeros(batch_size, self.num_codebooks, 0, dtype=torch.long, device=device)
        return self._step(audio.new_zeros(batch_size, 1, cfg.hop_length - pending))


class FrameStreamingDecoder(AudioStreamDecoder):
    """Decodes frames as they come; each frame's audio is final at once."""

    codec: FrameCodec

    def _known_key(self, key: str) -> bool:
        return super()._known_key(key) or key in ("phase", "tail") or key.startswith("hist")

    def _step(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.shape[-1] == 0:
            return self.codec.dec_window.new_zeros(codes.shape[0], 1, 0)
        return decode_streams([self], [codes])[0]

    @classmethod
    def _step_many(cls, decoders: list, codes: list) -> list[torch.Tensor]:
        codes = [d.codec.check_codes(c, allow_empty=True) for d, c in zip(decoders, codes,
                                                                           strict=True)]
        out: list[torch.Tensor | None] = [None] * len(decoders)
        for shape in {c.shape[1:] for c in codes}:  # one batch per (K', frames)
            group = [i for i, c in enumerate(codes) if c.shape[1:] == shape]
            if shape[-1] == 0:
                for i in group:
                    out[i] = decoders[i].step(codes[i])
                continue
            audio = decode_streams([decoders[i] for i in group], [codes[i] for i in group])
            for i, each in zip(group, audio, strict=True):
                out[i] = each
        return out

    def _flush(self, batch_size: int) -> torch.Tensor:
        return self.codec.dec_window.new_zeros(batch_size, 1, 0)
