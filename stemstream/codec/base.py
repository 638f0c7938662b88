"""The :class:`Codec` interface every audio codec in stemstream implements.

A codec turns mono audio into ``K`` parallel streams of discrete codes at a fixed frame rate
and back. Shapes (SPEC.md section 1): ``B`` batch, ``K`` codebooks, ``T`` frames, ``N``
samples, ``D`` latent dim. Offline calls take whole signals; :class:`AudioStreamEncoder` and
:class:`AudioStreamDecoder` take them block by block and produce the same numbers. Their state
is explicit (:meth:`AudioStreamEncoder.state_dict`), so a stream can be saved and resumed.

The public methods validate their inputs and raise :class:`CodecError` with a one-line
message; subclasses implement the underscored hooks on already-validated tensors.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from stemstream.checkpoint import hash_state, weights_hash
from stemstream.errors import StemstreamError

StreamState = dict[str, torch.Tensor]


class CodecError(StemstreamError):
    """Bad input to a codec (shape, range, rate, NaN) or an unusable codec checkpoint."""


def tokens_hash(codec: Codec) -> str:
    """A short hash of what decides a codec's tokens: the state of
    :meth:`Codec.token_modules` (encoder and quantizer). Fine-tuning only the decoder keeps
    it, so token dumps and language models made with the codec stay valid."""
    return hash_state((f"{i}.{name}", value)
                      for i, module in enumerate(codec.token_modules())
                      for name, value in sorted(module.state_dict().items()))


def same_tokens(recorded: Mapping[str, Any], identity: Mapping[str, Any]) -> bool:
    """Whether codes made by the codec a checkpoint or dump ``recorded`` mean the same to the
    codec with ``identity`` (both :meth:`Codec.codec_identity` dicts): equal tokens hashes, or
    for records without one (made before tokens hashes existed) equal weights hashes."""
    if recorded.get("tokens_hash") is not None:
        return recorded["tokens_hash"] == identity["tokens_hash"]
    return recorded.get("weights_hash") == identity["weights_hash"]


def describe_identity(identity: Mapping[str, Any]) -> str:
    """``"FrameCodec (weights 0123..., tokens 4567...)"`` for error messages."""
    tokens = identity.get("tokens_hash")
    extra = f", tokens {tokens}" if tokens else ""
    return f"{identity.get('class')} (weights {identity.get('weights_hash')}{extra})"


class Codec(nn.Module, metaclass=ABCMeta):
    """A causal or non-causal neural audio codec (an ``nn.Module``).

    Subclasses provide the properties and the ``_encode`` / ``_decode`` / ``_embed`` hooks,
    :meth:`streaming_encoder`, :meth:`streaming_decoder` and :meth:`config_dict`.
    """

    @property
    @abstractmethod
    def sample_rate(self) -> int:
        """Audio sample rate in Hz."""

    @property
    @abstractmethod
    def hop_length(self) -> int:
        """Samples per frame."""

    @property
    @abstractmethod
    def num_codebooks(self) -> int:
        """``K``: RVQ levels the codec produces."""

    @property
    @abstractmethod
    def codebook_size(self) -> int:
        """Entries per codebook; codes lie in ``[0, codebook_size)``."""

    @property
    @abstractmethod
    def latent_dim(self) -> int:
        """``D``: channels of :meth:`embed`'s output."""

    @property
    def frame_rate(self) -> float:
        """Frames per second (Hz)."""
        return self.sample_rate / self.hop_length

    # ----------------------------------------------------------------------------- offline

    def encode(
        self,
        wave: torch.Tensor,
        sample_rate: int | None = None,
        num_codebooks: int | None = None,
    ) -> torch.Tensor:
        """Audio to codes.

        Args:
            wave: float ``[B, 1, N]`` at :attr:`sample_rate`; right-padded with zeros to a
                multiple of :attr:`hop_length`.
            sample_rate: the rate of ``wave`` if known; a mismatch raises :class:`CodecError`
                (resample with :mod:`stemstream.audio` first).
            num_codebooks: keep only the first ``K' <= K`` levels (default all ``K``).

        Returns:
            long ``[B, K', T]`` with ``T = ceil(N / hop_length)``.
        """
        self.check_sample_rate(sample_rate)
        wave = self.check_wave(wave)
        num = self.check_num_codebooks(num_codebooks)
        pad = (-wave.shape[-1]) % self.hop_length
        wave = nn.functional.pad(wave, (0, pad))
        return self._encode(wave, num)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes to audio.

        Args:
            codes: integer ``[B, K', T]``, ``K' <= K``; the first ``K'`` levels are used.

        Returns:
            float ``[B, 1, T * hop_length]``.
        """
        return self._decode(self.check_codes(codes))

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes to the quantised latent (the model's input stream).

        Args:
            codes: integer ``[B, K', T]``, ``K' <= K``.

        Returns:
            float ``[B, D, T]``: the sum of the first ``K'`` levels' embeddings.
        """
        return self._embed(self.check_codes(codes))

    def input_latents(self, wave: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """A model's input stream for audio: float32 ``[B, D, T]``, the embedding of the first
        ``num_codebooks`` levels (the ``K`` the model was trained on; embedding all levels
        would hand it a latent it never saw). Every front end (file generation, the session,
        evaluation) derives its input this way.

        Args:
            wave: float ``[B, 1, N]`` at :attr:`sample_rate`.
            num_codebooks: ``K' <= K`` levels to embed.
        """
        return self.embed(self.encode(wave, num_codebooks=num_codebooks)).float()

    @abstractmethod
    def _encode(self, wave: torch.Tensor, num_codebooks: int) -> torch.Tensor:
        """``[B, 1, T * hop]`` (validated, padded) -> long ``[B, K', T]``."""

    @abstractmethod
    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """long ``[B, K', T]`` (validated) -> ``[B, 1, T * hop]``."""

    @abstractmethod
    def _embed(self, codes: torch.Tensor) -> torch.Tensor:
        """long ``[B, K', T]`` (validated) -> ``[B, D, T]``."""

    # --------------------------------------------------------------------------- streaming

    @abstractmethod
    def streaming_encoder(self, num_codebooks: int | None = None) -> AudioStreamEncoder:
        """A fresh stateful encoder whose concatenated outputs equal :meth:`encode` with the
        same ``num_codebooks`` (the first ``K'`` levels only, default all: a stream that needs
        fewer levels skips the quantiser's remaining stages)."""

    @abstractmethod
    def streaming_decoder(self) -> AudioStreamDecoder:
        """A fresh stateful decoder whose concatenated outputs equal :meth:`decode`."""

    # ---------------------------------------------------------------------------- identity

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """The codec's configuration as JSON-safe data (enough to rebuild it)."""

    def codec_identity(self) -> dict[str, Any]:
        """What a checkpoint records to know which codec its tokens belong to.

        Returns:
            ``{"class": ..., "config": {...}, "weights_hash": <16 hex chars>,
            "tokens_hash": <16 hex chars>}`` (see :func:`tokens_hash`).
        """
        return {
            "class": type(self).__name__,
            "config": self.config_dict(),
            "weights_hash": weights_hash(self),
            "tokens_hash": tokens_hash(self),
        }

    def token_modules(self) -> list[nn.Module]:
        """The modules that decide the codes of audio and the latents of codes (encoder and
        quantizer): what token dumps and language models depend on. Default: everything."""
        return [self]

    # -------------------------------------------------------------------------- validation

    def _reference_tensor(self) -> torch.Tensor | None:
        for tensor in self.parameters():
            return tensor
        for tensor in self.buffers():
            if tensor.is_floating_point():
                return tensor
        return None

    def check_sample_rate(self, sample_rate: int | None) -> None:
        """Raise :class:`CodecError` unless ``sample_rate`` is ``None`` or the codec's rate."""
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            raise CodecError(
                f"audio is at {sample_rate} Hz but the codec expects {self.sample_rate} Hz; "
                "resample it first (stemstream.audio.resample)"
            )

    def check_num_codebooks(self, num_codebooks: int | None) -> int:
        """Resolve ``None`` to ``K``; raise :class:`CodecError` outside ``1..K``."""
        if num_codebooks is None:
            return self.num_codebooks
        if not 1 <= int(num_codebooks) <= self.num_codebooks:
            raise CodecError(
                f"num_codebooks must be in 1..{self.num_codebooks}, got {num_codebooks}"
            )
        return int(num_codebooks)

    def check_wave(
        self, wave: torch.Tensor, what: str = "wave", allow_empty: bool = False
    ) -> torch.Tensor:
        """Validate a ``[B, 1, N]`` float waveform; return it in the codec's dtype."""
        if not isinstance(wave, torch.Tensor):
            raise CodecError(f"{what} must be a torch.Tensor, got {type(wave).__name__}")
        if wave.dim() != 3 or wave.shape[1] != 1 or wave.shape[0] < 1:
            raise CodecError(
                f"{what} must be mono audio shaped [B, 1, N], got shape {tuple(wave.shape)}"
            )
        if wave.shape[-1] == 0 and not allow_empty:
            raise CodecError(f"{what} is empty (zero samples)")
        if not wave.is_floating_point():
            raise CodecError(f"{what} must be floating point, got {wave.dtype}")
        finite = torch.isfinite(wave)
        if not bool(finite.all()):
            bad = int(finite.numel() - finite.sum())
            raise CodecError(f"{what} contains {bad} NaN/Inf samples")
        reference = self._reference_tensor()
        if reference is not None:
            if wave.device != reference.device:
                raise CodecError(
                    f"{what} is on {wave.device} but the codec is on {reference.device}"
                )
            wave = wave.to(reference.dtype)
        return wave

    def check_codes(
        self, codes: torch.Tensor, what: str = "codes", allow_empty: bool = False
    ) -> torch.Tensor:
        """Validate integer codes ``[B, K', T]`` with ``1 <= K' <= K``; return them as long."""
        if not isinstance(codes, torch.Tensor):
            raise CodecError(f"{what} must be a torch.Tensor, got {type(codes).__name__}")
        if codes.dim() != 3 or codes.shape[0] < 1:
            raise CodecError(f"{what} must be shaped [B, K, T], got shape {tuple(codes.shape)}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise CodecError(f"{what} must be an integer tensor, got {codes.dtype}")
        num = codes.shape[1]
        if not 1 <= num <= self.num_codebooks:
            raise CodecError(
                f"{what} have {num} codebooks but the codec has 1..{self.num_codebooks}"
            )
        if codes.shape[-1] == 0:
            if not allow_empty:
                raise CodecError(f"{what} are empty (zero frames)")
            return codes.long()
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= self.codebook_size:
            bad = low if low < 0 else high
            raise CodecError(f"{what} contain {bad}, outside [0, {self.codebook_size})")
        reference = self._reference_tensor()
        if reference is not None and codes.device != reference.device:
            raise CodecError(f"{what} are on {codes.device} but the codec is on {reference.device}")
        return codes.long()


class _Stream:
    """Shared state handling of the streaming encoder and decoder."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self._state: StreamState = {}

    def reset(self) -> None:
        """Forget everything: the next :meth:`step` starts a new stream."""
        self._state = {}

    def state_dict(self) -> StreamState:
        """A copy of the stream's state (tensors only; save it with ``torch.save`` or
        safetensors). Loading it into a fresh stream object of the same codec continues the
        stream bit-identically."""
        return {key: value.detach().clone() for key, value in self._state.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore a state from :meth:`state_dict`."""
        if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
        ):
            raise CodecError("stream state must be a mapping of names to tensors")
        unknown = sorted(key for key in state if not self._known_key(key))
        if unknown:
            raise CodecError(
                f"stream state has keys this {type(self).__name__} does not know: "
                f"{', '.join(unknown[:5])}"
            )
        self._state = {key: value.detach().clone() for key, value in state.items()}

    def _known_key(self, key: str) -> bool:
        return key.startswith("meta.")

    def _counter(self, name: str) -> int:
        value = self._state.get(f"meta.{name}")
        return 0 if value is None else int(value)

    def _set_counter(self, name: str, value: int) -> None:
        self._state[f"meta.{name}"] = torch.tensor(value, dtype=torch.long)

    def _check_batch(self, batch_size: int) -> None:
        expected = self._counter("batch_size")
        if expected == 0:
            self._set_counter("batch_size", batch_size)
        elif batch_size != expected:
            raise CodecError(
                f"this stream has batch size {expected}; got a block with batch size {batch_size}"
            )

    def _batch_size(self) -> int:
        batch = self._counter("batch_size")
        if batch == 0:
            raise CodecError("flush() called before any step()")
        return batch


class AudioStreamEncoder(_Stream, metaclass=ABCMeta):
    """Audio blocks of any length in, codes out as soon as each frame is final.

    Concatenating the outputs of every :meth:`step` and the final :meth:`flush` along the
    last axis equals :meth:`Codec.encode` of the concatenated input (with the same
    :attr:`num_codebooks`).
    """

    def __init__(self, codec: Codec, num_codebooks: int | None = None) -> None:
        super().__init__(codec)
        self.num_codebooks = codec.check_num_codebooks(num_codebooks)

    def step(self, block: torch.Tensor) -> torch.Tensor:
        """Feed audio.

        Args:
            block: float ``[B, 1, n]``, any ``n >= 0``; ``B`` fixed for the stream.

        Returns:
            long ``[B, K', t]``: the frames completed by this block (``t >= 0``).
        """
        block = self.codec.check_wave(block, what="block", allow_empty=True)
        self._check_batch(block.shape[0])
        return self._step(block)

    def flush(self) -> torch.Tensor:
        """End the stream: return the frames that need the offline zero padding.

        Returns:
            long ``[B, K', t]``; afterwards the encoder is reset.
        """
        batch = self._batch_size()
        codes = self._flush(batch)
        self.reset()
        return codes

    @staticmethod
    def step_many(encoders: Sequence[AudioStreamEncoder],
                  blocks: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each encoder's :meth:`step` of its block (many independent streams, e.g. the
        sessions of a server); a codec may compute them as one batch (same results)."""
        return _step_many(AudioStreamEncoder, encoders, blocks)

    @classmethod
    def _step_many(cls, encoders: list, blocks: list) -> list[torch.Tensor]:
        raise NotImplementedError

    @abstractmethod
    def _step(self, block: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _flush(self, batch_size: int) -> torch.Tensor: ...


class AudioStreamDecoder(_Stream, metaclass=ABCMeta):
    """Codes in frame by frame, audio out as soon as it is final.

    Concatenating the outputs of every :meth:`step` and the final :meth:`flush` equals
    :meth:`Codec.decode` of the concatenated codes. A decoder may hold back
    :attr:`latency_samples` samples until the next frame (or :meth:`flush`) arrives.
    """

    @property
    def latency_samples(self) -> int:
        """Samples of audio withheld until the following frame is known."""
        return 0

    @staticmethod
    def step_many(decoders: Sequence[AudioStreamDecoder],
                  codes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each decoder's :meth:`step` of its codes (many independent streams); a codec may
        compute them as one batch (same results)."""
        return _step_many(AudioStreamDecoder, decoders, codes)

    @classmethod
    def _step_many(cls, decoders: list, codes: list) -> list[torch.Tensor]:
        raise NotImplementedError

    def step(self, codes: torch.Tensor) -> torch.Tensor:
        """Feed frames.

        Args:
            codes: integer ``[B, K', t]``, ``t >= 0``; ``B`` fixed for the stream.

        Returns:
            float ``[B, 1, n]``: the audio made final by these frames.
        """
        codes = self.codec.check_codes(codes, allow_empty=True)
        self._check_batch(codes.shape[0])
        return self._step(codes)

    def flush(self) -> torch.Tensor:
        """End the stream: return the withheld tail (as offline decoding computes it).

        Returns:
            float ``[B, 1, n]``; afterwards the decoder is reset.
        """
        batch = self._batch_size()
        wave = self._flush(batch)
        self.reset()
        return wave

    @abstractmethod
    def _step(self, codes: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _flush(self, batch_size: int) -> torch.Tensor: ...


def _step_many(base: type, streams: Sequence[_Stream], items: Sequence[torch.Tensor]
               ) -> list[torch.Tensor]:
    """``stream.step(item)`` of each pair, through the streams' class's batched
    ``_step_many`` when they are all of one class (of one codec) that has one."""
    kind = type(streams[0]) if streams else None
    same = all(type(s) is kind and s.codec is streams[0].codec for s in streams)
    if same and kind is not None and kind._step_many.__func__ is not base._step_many.__func__:
        return kind._step_many(list(streams), list(items))
    return [s.step(i) for s, i in zip(streams, items, strict=True)]
