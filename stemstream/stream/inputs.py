"""What a streaming model hears, from audio: the codec embedding of the first ``K`` levels, then
the musical input features its config names (:mod:`stemstream.features`). Every front end
(file generation, evaluation, the session) builds its input here, so they all feed the model
the same numbers for the same audio."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from stemstream.codec.base import AudioStreamEncoder, Codec
from stemstream.errors import StreamError
from stemstream.features import FeatureStream, features


def model_input(codec: Codec, config: Any, wave: torch.Tensor) -> torch.Tensor:
    """A whole signal's model input: float32 ``[B, D_in, T]``.

    Args:
        codec: the model's codec.
        config: the model's config (``num_codebooks``; ``input_features`` if it has them).
        wave: float ``[B, 1, N]`` at the codec's rate.
    """
    latents = codec.input_latents(wave, config.num_codebooks)
    names = getattr(config, "input_features", ())
    if not names:
        return latents
    samples = wave.detach().float().cpu().numpy()
    extra = np.stack([features(s[0], codec.sample_rate, codec.hop_length, names)
                      for s in samples])
    extra = torch.from_numpy(extra[..., : latents.shape[-1]]).to(latents.device)
    return torch.cat([latents, extra], dim=1)


class InputStream:
    """:func:`model_input` of one mono stream pushed in pieces: the concatenated outputs of
    :meth:`step` (and a final flush) equal the offline input frame for frame.

    Args:
        codec: the model's codec.
        config: the model's config.
    """

    def __init__(self, codec: Codec, config: Any):
        self.codec = codec
        self.encoder = codec.streaming_encoder(config.num_codebooks)
        names = getattr(config, "input_features", ())
        self.features = FeatureStream(codec.sample_rate, codec.hop_length, names) if names \
            else None
        self.channels = codec.latent_dim + (self.features.dim if self.features else 0)
        # feature frames computed before the codec emitted their latents
        self._pending = np.zeros((self.channels - codec.latent_dim, 0), np.float32)

    def step(self, wave: torch.Tensor, final: bool = False) -> torch.Tensor:
        """``wave [1, 1, n]`` at the codec rate -> the frames it completes, ``[1, D_in, m]``
        (``final``: the stream ends here; the last partial frame is padded, as offline)."""
        return self._latents(self.encoder.step(wave), wave, final)

    @staticmethod
    def step_many(streams: Sequence[InputStream], waves: Sequence[torch.Tensor],
                  final: bool = False) -> list[torch.Tensor]:
        """Each stream's :meth:`step` of its wave (the sessions of an engine), the codec's
        encoders run as one batch where the codec can, and the frames of all streams
        embedded in one call (same results: a frame's embedding is its own)."""
        if not streams:
            return []
        codes = AudioStreamEncoder.step_many([s.encoder for s in streams], waves)
        codes = [s._flushed(c, final) for s, c in zip(streams, codes, strict=True)]
        counts = [c.shape[-1] for c in codes]
        if sum(counts):
            latents = streams[0].codec.embed(torch.cat(codes, dim=-1)).float()
            latents = latents.split(counts, dim=-1)
        else:
            latents = [streams[0]._no_latents() for _ in streams]
        # the feature frames of all streams computed together (same numbers as alone)
        hearing = [i for i, s in enumerate(streams) if s.features is not None]
        pushed: list[np.ndarray | None] = [None] * len(streams)
        frames = FeatureStream.push_many([streams[i].features for i in hearing],
                                         [_samples(waves[i]) for i in hearing])
        for i, new in zip(hearing, frames, strict=True):
            pushed[i] = streams[i]._flushed_features(new, final)
        return [s._with_features(latent, new)
                for s, latent, new in zip(streams, latents, pushed, strict=True)]

    def _latents(self, codes: torch.Tensor, wave: torch.Tensor, final: bool) -> torch.Tensor:
        codes = self._flushed(codes, final)
        latents = self.codec.embed(codes).float() if codes.shape[-1] else self._no_latents()
        if self.features is None:
            return latents
        new = self._flushed_features(self.features.push(_samples(wave)), final)
        return self._with_features(latents, new)

    def _flushed(self, codes: torch.Tensor, final: bool) -> torch.Tensor:
        return torch.cat([codes, self.encoder.flush()], dim=-1) if final else codes

    def _no_latents(self) -> torch.Tensor:
        return torch.zeros(1, self.codec.latent_dim, 0)

    def _flushed_features(self, frames: np.ndarray, final: bool) -> np.ndarray:
        return np.concatenate([frames, self.features.flush()], axis=1) if final else frames

    def _with_features(self, latents: torch.Tensor, new: np.ndarray | None) -> torch.Tensor:
        """``latents`` with the feature frames that go with them (``new``: the frames the
        features just completed; ``None``: the model hears no features)."""
        if new is None:
            return latents
        ready = np.concatenate([self._pending, new], axis=1)
        count = latents.shape[-1]
        if ready.shape[1] < count:
            raise StreamError(f"the codec emitted {count} frames but only {ready.shape[1]} "
                              "frames of input features are complete")
        self._pending = ready[:, count:]
        extra = torch.from_numpy(np.ascontiguousarray(ready[:, :count])).to(latents.device)
        return torch.cat([latents, extra[None]], dim=1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's state (``encoder.*``) and, with features, theirs (``features.*``)."""
        state = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        if self.features is not None:
            for key, value in self.features.state_dict().items():
                state[f"features.{key}"] = torch.from_numpy(np.array(value))
            state["features.pending_frames"] = torch.from_numpy(self._pending.copy())
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        def part(prefix: str) -> dict[str, Any]:
            return {k[len(prefix) + 1 :]: v for k, v in state.items()
                    if k.startswith(prefix + ".")}

        self.encoder.load_state_dict(part("encoder"))
        if self.features is not None:
            saved = {k: v.numpy() for k, v in part("features").items()}
            self._pending = np.array(saved.pop("pending_frames"), np.float32)
            self.features.load_state_dict(saved)


def _samples(wave: torch.Tensor) -> np.ndarray:
    """``[1, 1, n]`` -> float ``[n]`` for the feature streams."""
    return wave[0, 0].detach().float().cpu().numpy()
