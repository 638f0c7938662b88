"""The paper's model: a causal decoder over delayed codec tokens that hears the input stream
with future visibility ``t_f`` and decides ``k`` frames per call (SPEC sections 1 and 5).

Each position fuses an input-stream latent with an output-token embedding, as the reference
does: ``LN(LN(proj(x)) + g * LN(emb(y)))`` with a zero-initialised gate ``g``; the instrument
class token starts the sequence. ``input_encoder = "conv"`` replaces ``proj(x)`` of the newest
visible frame by a causal summary of the visible input window
(:mod:`stemstream.model.input_encoder`): the frame aligned with the predicted one when
``t_f > 1``, and the latest onsets and harmony. ``input_features`` adds musically explicit
features of the input audio (:mod:`stemstream.features`: onsets, loudness, chroma, beat
phase) as extra channels of every input frame, heard through the same projections.

Training can corrupt the target history so the model must listen
(:meth:`StreamingDecoder.corrupt_history`): whole-window dropout, random token replacement
and span masking, never applied at inference. ``input_dropout`` hides the whole input of some
windows instead, so that generation can use *input guidance*
(:attr:`~stemstream.model.sampling.SamplingConfig.guidance`): each position runs with and
without its input (a ``2B`` batch whose second half hears "no input") and samples from the
logits pushed along their difference.

Which frame and which token each position carries, and the block mask that trains every
chunk of a sequence in one pass, come from :mod:`stemstream.model.layout`. Heads predict only
codec tokens ``[0, V)``; delay-pattern pads are forced, never sampled.

Generation keeps the KV cache across chunks: for ``k > 1`` the previous chunk's token-only
positions are rolled back and re-entered as fused positions (their input is heard now) before
the next chunk is generated — ``2k`` positions per chunk, cost linear in stream length.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from stemstream.errors import ConfigError
from stemstream.features import BEAT_UNIT_SECONDS, check_features, feature_dim, feature_offset
from stemstream.guidance import format_guidance
from stemstream.model.decode_step import NO_WINDOW, stack_caches
from stemstream.model.delay import DelayPattern
from stemstream.model.input_encoder import InputEncoder, check_input_encoder
from stemstream.model.kv_cache import CacheOverflowError, KVCache
from stemstream.model.layout import Layout, check_stream_args, training_layout
from stemstream.model.sampling import (
    SamplingConfig,
    guided_logits,
    sample_tokens,
)
from stemstream.model.transformer import Transformer, TransformerConfig


@dataclass(frozen=True)
class StreamingDecoderConfig:
    """Model shape and the two design variables (frames: ``future_frames`` = ``t_f``,
    ``chunk_frames`` = ``k``)."""

    backbone: TransformerConfig = field(default_factory=TransformerConfig)
    num_codebooks: int = 4
    codebook_size: int = 1024
    input_dim: int = 128
    num_classes: int = 18
    future_frames: int = 0
    chunk_frames: int = 1
    # how a position hears the input: "frame" (the paper: frame p + t_f - 1 alone) or "conv"
    # (a causal summary of the visible window, input_window frames of recent context)
    input_encoder: str = "frame"
    input_window: int = 8
    # musical features of the input audio (stemstream.features) heard beside the latents:
    # the input stream then has input_dim + their channels, features last
    input_features: tuple[str, ...] = ()
    # seconds by which the ``beat`` feature's phase is advanced before the model hears it
    # (rotated by 2 pi lead / period, the period its own channel gives): at (1 - t_f) frames
    # for k = 1, a position hears the beat phase of the frame it decides, extrapolated from
    # the input it has heard (a live model, t_f < 0, must play on beats it has not heard)
    beat_lead_seconds: float = 0.0
    # training only, forcing the input path: the probability that a window's whole target
    # history is hidden (its token embeddings zeroed; the instrument token stays), the
    # fraction of history tokens replaced by random codes, and the fraction of history steps
    # hidden in spans of history_span_frames
    history_dropout: float = 0.0
    history_noise: float = 0.0
    history_span: float = 0.0
    history_span_frames: int = 25
    # training only: the probability that a window's whole target history is shown late, by
    # 1..history_shift_frames frames (its first steps hidden): the history then says which
    # instrument and tempo but not where the beat falls now, which only the input tells
    history_shift: float = 0.0
    history_shift_frames: int = 50
    # training only: the probability that a window hears no input at all (every position
    # gets the learned "no input" vector), which trains the unconditional half of input
    # guidance (SamplingConfig.guidance)
    input_dropout: float = 0.0
    # training only: weight of an auxiliary head that predicts, at the position deciding
    # frame t, whether a note of the target starts in frame t (0 = no head)
    onset_loss_weight: float = 0.0
    # training only: an auxiliary head at each position predicts how much the input changes
    # (its latent flux ||x_t - x_(t-1)||, standardised per window) in each of the next
    # anticipation_frames input frames it has not heard yet: only a representation of the
    # input's beat phase can, which a t_f < 0 model needs to play on the beat (0 = no head)
    anticipation_frames: int = 0
    anticipation_loss_weight: float = 0.0

    def __post_init__(self):
        check_stream_args(self.future_frames, self.chunk_frames)
        check_input_encoder(self.input_encoder, self.input_window)
        object.__setattr__(self, "input_features", check_features(self.input_features))
        if self.beat_lead_seconds and "beat" not in self.input_features:
            raise ConfigError("beat_lead_seconds needs the 'beat' input feature")
        if not math.isfinite(self.beat_lead_seconds):
            raise ConfigError(f"beat_lead_seconds must be finite, got {self.beat_lead_seconds}")
        for name in ("history_dropout", "history_noise", "history_span", "history_shift",
                     "input_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("onset_loss_weight", "anticipation_loss_weight", "anticipation_frames"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if (self.anticipation_frames > 0) != (self.anticipation_loss_weight > 0):
            raise ConfigError("anticipation_frames and anticipation_loss_weight go together: "
                              "both > 0 (a head) or both 0")
        for name in ("history_span_frames", "history_shift_frames"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_codebooks", "codebook_size", "input_dim", "num_classes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def input_channels(self) -> int:
        """``D_in`` plus the feature channels: the width of the input stream a caller passes."""
        return self.input_dim + feature_dim(self.input_features)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"input_features": list(self.input_features)}


def advance_beat(beat: torch.Tensor, lead_seconds: float) -> torch.Tensor:
    """``beat [..., 3]`` (``sin``, ``cos`` of the phase and ``log2`` of the period over
    :data:`~stemstream.features.BEAT_UNIT_SECONDS`, as :mod:`stemstream.features` gives them)
    -> the same with the phase ``lead_seconds`` later at that period."""
    sin, cos, log_period = beat.unbind(-1)
    turn = (2 * math.pi * lead_seconds / BEAT_UNIT_SECONDS) * torch.exp2(-log_period)
    turn_sin, turn_cos = torch.sin(turn), torch.cos(turn)
    return torch.stack([sin * turn_cos + cos * turn_sin, cos * turn_cos - sin * turn_sin,
                        log_period], dim=-1)


class StreamOutput(NamedTuple):
    """``logits [B, L', K, V]`` at the trained positions and their ``targets [B, K, L']``
    (``pad_id`` where the delay pattern has no code), and the training ``loss``: the mean
    cross-entropy plus ``onset_loss_weight`` x ``onset_loss`` (the auxiliary onset head's
    binary cross-entropy, when target onsets were given) plus ``anticipation_loss_weight`` x
    ``anticipation_loss`` (the anticipation head's squared error, see the config)."""

    logits: torch.Tensor
    targets: torch.Tensor
    loss: torch.Tensor
    onset_loss: torch.Tensor | None = None
    anticipation_loss: torch.Tensor | None = None


class StreamingDecoder(nn.Module):
    """See the module docstring. Shapes: ``B`` batch, ``K`` codebooks, ``T`` frames, ``S``
    delayed steps (``T + K - 1``), ``D`` model width, ``D_in`` input width
    (:attr:`StreamingDecoderConfig.input_channels`: the codec latents, then the input features
    when the config names some)."""

    def __init__(self, config: StreamingDecoderConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        dim = config.backbone.dim
        kw = {"device": device, "dtype": dtype}
        self.delay = DelayPattern(config.num_codebooks, config.codebook_size)
        self.token_emb = nn.ModuleList(
            [nn.Embedding(self.delay.vocab_size, dim, **kw) for _ in range(config.num_codebooks)]
        )
        self.inst_emb = nn.Embedding(config.num_classes, dim, **kw)
        self.in_proj = nn.Linear(config.input_channels, dim, **kw)
        self.input_encoder = None
        if config.input_encoder == "conv":
            self.input_encoder = InputEncoder(
                config.input_channels, dim, config.input_window, config.future_frames, **kw
            )
        self.no_input = nn.Parameter(torch.zeros(dim, **kw))
        self.norm_x = nn.LayerNorm(dim, **kw)
        self.norm_y = nn.LayerNorm(dim, **kw)
        self.gate = nn.Parameter(torch.zeros(1, **kw))
        self.norm_fused = nn.LayerNorm(dim, **kw)
        self.backbone = Transformer(config.backbone, **kw)
        self.heads = nn.Linear(dim, config.num_codebooks * config.codebook_size, **kw)
        self.onset_head = nn.Linear(dim, 1, **kw) if config.onset_loss_weight > 0 else None
        self.anticipation_head = (nn.Linear(dim, config.anticipation_frames, **kw)
                                  if config.anticipation_frames > 0 else None)
        for emb in [*self.token_emb, self.inst_emb]:
            nn.init.normal_(emb.weight, std=0.02)
        # multiplier of the history-corruption rates (a training schedule sets it per step)
        self.history_scale = 1.0
        # a compiled DecodeStep for single generation positions (stemstream.model.routes);
        # None = eager
        self.step_route = None

    # ------------------------------------------------------------------------- pieces
    def embed_tokens(self, tokens: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
        """Delayed tokens ``[B, K, L]`` (``-1`` = instrument position) -> ``[B, L, D]``."""
        is_inst = tokens[:, 0] < 0
        safe = tokens.clamp_min(0)
        y = sum(emb(safe[:, q]) for q, emb in enumerate(self.token_emb))
        return torch.where(is_inst[..., None], self.inst_emb(inst)[:, None], y)

    @property
    def input_context(self) -> int:
        """Raw input frames before the newest visible one that a position also hears."""
        return 0 if self.input_encoder is None else self.input_encoder.context

    def input_view(self, latents: torch.Tensor) -> torch.Tensor:
        """The raw input stream ``[..., D_in]`` as the model reads it: unchanged, or with the
        ``beat`` feature's phase advanced by ``beat_lead_seconds`` (frame by frame, no
        learned part; an all-zero frame stays zero)."""
        lead = self.config.beat_lead_seconds
        if not lead:
            return latents
        first = self.config.input_dim + feature_offset(self.config.input_features, "beat")
        return torch.cat([latents[..., :first],
                          advance_beat(latents[..., first : first + 3], lead),
                          latents[..., first + 3 :]], dim=-1)

    def condition(self, latents: torch.Tensor) -> torch.Tensor:
        """Input latents of consecutive frames ``[B, T, D_in]`` (frame 0 = the stream's first,
        or a frame at least :attr:`input_context` frames later) -> what a position whose newest
        visible frame is ``t`` hears, ``[B, T, D]``."""
        latents = self.input_view(latents)
        projected = self.in_proj(latents)
        if self.input_encoder is None:
            return projected
        return self.input_encoder(latents, projected)

    def fuse(
        self, heard: torch.Tensor | None, has_input: torch.Tensor, token_emb: torch.Tensor
    ) -> torch.Tensor:
        """``heard [B, L, D]`` (from :meth:`condition`) where ``has_input [L]`` (or
        ``[B, L]``), token embeddings ``[B, L, D]`` -> fused ``[B, L, D]``."""
        if heard is None:
            x = self.no_input.expand_as(token_emb)
        else:
            x = torch.where(has_input[..., None], self.norm_x(heard), self.no_input)
        return self.norm_fused(x + self.gate * self.norm_y(token_emb))

    def corrupt_history(
        self, delayed: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The target history a training window shows the model: delayed tokens ``[B, K, S]``
        with ``history_noise`` of the codes replaced by random ones, and ``hidden [B, S]``,
        the steps whose embeddings are zeroed (whole windows with ``history_dropout``, spans
        of ``history_span_frames`` covering about ``history_span`` of the steps). A
        ``history_shift`` fraction of windows shows the history late: step ``s`` carries step
        ``s - lag`` (``lag`` drawn in ``[1, history_shift_frames]`` per window, the first
        ``lag`` steps hidden), so it stays causal but its beat phase is not the present one.
        Every rate is multiplied by :attr:`history_scale`, which a training schedule may
        set."""
        cfg = self.config
        scale = self.history_scale
        batch, _, steps = delayed.shape
        device = delayed.device

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, device=device, generator=generator)

        tokens = delayed
        late = torch.zeros(batch, steps, dtype=torch.bool, device=device)
        if cfg.history_shift * scale > 0:
            lag = torch.randint(1, cfg.history_shift_frames + 1, (batch,), device=device,
                                generator=generator)
            lag = lag * (rand(batch) < cfg.history_shift * scale)
            source = torch.arange(steps, device=device)[None] - lag[:, None]  # [B, S]
            late = source < 0
            tokens = delayed.gather(
                2, source.clamp_min(0)[:, None].expand(-1, delayed.shape[1], -1)
            )
        if cfg.history_noise * scale > 0:
            noise = torch.randint(
                cfg.codebook_size, delayed.shape, device=device, generator=generator
            )
            replace = rand(*delayed.shape) < cfg.history_noise * scale
            replace &= tokens < cfg.codebook_size
            tokens = torch.where(replace, noise, tokens)
        hidden = late | (rand(batch) < cfg.history_dropout * scale)[:, None]
        if cfg.history_span * scale > 0:
            span = cfg.history_span_frames
            starts = (rand(batch, steps) < cfg.history_span * scale / span).float()
            covered = F.max_pool1d(F.pad(starts[:, None], (span - 1, 0)), span, stride=1)[:, 0]
            hidden = hidden | (covered > 0)
        return tokens, hidden

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, L, D] -> [B, L, K, V]``."""
        return self.heads(hidden).unflatten(
            -1, (self.config.num_codebooks, self.config.codebook_size)
        )

    # ----------------------------------------------------------------------- training
    def forward(
        self,
        input_latents: torch.Tensor,
        target_codes: torch.Tensor,
        inst: torch.Tensor,
        hide_history: bool = False,
        onsets: torch.Tensor | None = None,
        hide_input: bool = False,
    ) -> StreamOutput:
        """Teacher-forced pass over whole windows (all chunks at once when ``k > 1``).

        Args:
            input_latents: ``[B, D_in, T_in]`` the input stream (``T_in >= T + t_f`` frames
                give every step its full horizon; fewer are allowed).
            target_codes: long ``[B, K, T]``.
            inst: long ``[B]`` instrument classes.
            hide_history: hide the whole target history (a measurement: what the model
                predicts from the input and the instrument alone).
            onsets: optional bool ``[B, T]``, target note onsets per frame: trains the
                auxiliary onset head (with ``onset_loss_weight > 0``).
            hide_input: every position hears "no input" (a measurement, and the
                unconditional logits of input guidance).
        """
        cfg = self.config
        delayed = self.delay.apply(target_codes)  # [B, K, S]
        layout = training_layout(
            delayed.shape[-1], cfg.future_frames, cfg.chunk_frames, input_latents.shape[-1]
        )
        return self._run_layout(input_latents, delayed, inst, layout, hide_history, onsets,
                                hide_input)

    def _run_layout(
        self, input_latents, delayed, inst, layout, hide_history: bool = False, onsets=None,
        hide_input: bool = False,
    ) -> StreamOutput:
        device = delayed.device
        layout = Layout(**{f.name: getattr(layout, f.name).to(device) for f in fields(layout)})
        prev = layout.token_step.clamp_min(0)
        is_inst = (layout.token_step < 0)[None]
        history, hide = delayed, None
        if self.training:
            history, hide = self.corrupt_history(delayed)
        if hide_history:
            hide = torch.ones(delayed.shape[0], delayed.shape[-1], dtype=torch.bool,
                              device=device)
        tokens = history[:, :, prev].masked_fill(is_inst[:, None], -1)
        frames = layout.input_frame
        heard = self.condition(input_latents.transpose(1, 2))[:, frames.clamp_min(0)]
        has_input = (frames >= 0) & (not hide_input)
        deaf = None
        if self.training and self.config.input_dropout > 0:
            deaf = torch.rand(delayed.shape[0], device=device) < self.config.input_dropout
            has_input = has_input[None] & ~deaf[:, None]
        token_emb = self.embed_tokens(tokens, inst)
        if hide is not None:
            token_emb = token_emb.masked_fill((hide[:, prev] & ~is_inst)[..., None], 0.0)
        hidden = self.backbone(
            self.fuse(heard, has_input, token_emb),
            positions=layout.positions,
            mask=layout.mask,
        )
        trained = hidden[:, layout.loss]
        logits = self.logits(trained)
        targets = delayed[:, :, layout.positions[layout.loss]]
        loss = F.cross_entropy(
            logits.flatten(0, 2), targets.transpose(1, 2).flatten(), ignore_index=self.delay.pad_id
        )
        onset_loss = None
        if onsets is not None and self.onset_head is not None:
            # position p decides codebook 0 of frame p: its onset target is onsets[:, p]
            frames = min(onsets.shape[-1], trained.shape[1])
            onset_logits = self.onset_head(trained[:, :frames]).squeeze(-1)
            onset_loss = F.binary_cross_entropy_with_logits(
                onset_logits.float(), onsets[:, :frames].float()
            )
            loss = loss + self.config.onset_loss_weight * onset_loss
        anticipation_loss = None
        if self.anticipation_head is not None and not hide_input:
            anticipation_loss = self._anticipation_loss(
                trained, input_latents, layout.input_frame[layout.loss], deaf)
            if anticipation_loss is not None:
                loss = loss + self.config.anticipation_loss_weight * anticipation_loss
        return StreamOutput(logits, targets, loss, onset_loss, anticipation_loss)

    def _anticipation_loss(self, trained: torch.Tensor, input_latents: torch.Tensor,
                           heard: torch.Tensor, deaf: torch.Tensor | None) -> torch.Tensor | None:
        """Squared error of the anticipation head at the trained positions ``trained
        [B, L', D]`` whose newest heard input frames are ``heard [L']``: its targets are the
        input's latent flux (standardised over the window) in frames ``heard + 1 .. heard + A``
        (those inside the window); windows that hear no input (``deaf [B]``) are left out.
        ``None`` when no target frame lies inside the window."""
        latents = input_latents[:, : self.config.input_dim].float()  # codec part only
        flux = (latents[..., 1:] - latents[..., :-1]).norm(dim=1)  # [B, T_in - 1]: frame t+1
        flux = F.pad(flux, (1, 0))  # frame 0 has no predecessor: no change
        # standardised per window: predicting the mean scores 1, whatever the music's level
        flux = (flux - flux.mean(dim=-1, keepdim=True)) / flux.std(
            dim=-1, keepdim=True).clamp_min(1e-6)
        ahead = torch.arange(1, self.config.anticipation_frames + 1, device=heard.device)
        frames = heard[:, None] + ahead  # [L', A]
        valid = ((frames >= 1) & (frames < flux.shape[-1]))[None].expand(flux.shape[0], -1, -1)
        if deaf is not None:
            valid = valid & ~deaf[:, None, None]
        if not valid.any():
            return None
        target = flux[:, frames.clamp(0, flux.shape[-1] - 1)]  # [B, L', A]
        predicted = self.anticipation_head(trained).float()
        return ((predicted - target) ** 2)[valid].mean()

    # --------------------------------------------------------------------- generation
    def new_state(
        self,
        inst: torch.Tensor,
        max_steps: int | None = None,
        window: int | None = None,
        guided: bool = False,
    ) -> GenerationState:
        """A fresh stream for instrument classes ``inst [B]``; ``window`` bounds the KV cache
        (ring) so a stream can run forever. ``guided``: keep a second, input-less copy of
        every stream for input guidance (sampling with ``guidance != 1``; twice the work)."""
        param = self.no_input  # stays a Parameter under dynamic int8 quantisation of Linears
        caches = self.backbone.make_caches(
            inst.shape[0] * (2 if guided else 1),
            max_steps and 2 * max_steps,
            window=window,
            device=param.device,
            dtype=param.dtype,
        )
        return GenerationState(inst, caches, [], 0, 0, guided=guided)

    @torch.no_grad()
    def generate_chunk(
        self,
        state: GenerationState,
        input_latents: torch.Tensor,
        sampling: SamplingConfig | None = None,
        generator: torch.Generator | None = None,
        forced: torch.Tensor | None = None,
        input_complete: bool = False,
        input_offset: int = 0,
    ) -> torch.Tensor:
        """Emit the next chunk of ``k`` delayed steps.

        Args:
            state: from :meth:`new_state`; updated in place.
            input_latents: ``[B, D_in, T']`` the input frames heard so far, from frame
                ``input_offset`` on (the stream up to frame ``c + t_f - 1`` for chunk start
                ``c``, when that is positive). A long-running caller drops old frames and
                raises ``input_offset``; frames from ``c - k + t_f - 1 - input_context`` on
                must be kept.
            forced: optional long ``[B, K, k]`` tokens to use instead of sampling (teacher
                forcing, for tests); pads are forced regardless.
            input_complete: the input has ended (a file): frames past its end count as
                silence-free "no input", as in training. Otherwise a chunk whose horizon is
                not yet heard is an error.

        Returns:
            long ``[B, K, k]`` delayed tokens of steps ``c .. c + k - 1``.
        """
        cfg = self.config
        sampling = sampling or SamplingConfig()
        if sampling.guided and not state.guided:
            raise ConfigError(
                f"input guidance {format_guidance(sampling.guidance)} needs a state made with "
                "new_state(..., guided=True)"
            )
        k, start = cfg.chunk_frames, state.step
        need = start + cfg.future_frames
        heard = input_offset + input_latents.shape[-1]
        if need > heard and not input_complete:
            raise ConfigError(
                f"chunk at step {start} needs {need} input frames "
                f"(t_f = {cfg.future_frames}), got {heard}"
            )
        if k > 1 and state.pending:
            self._refeed_fused(state, input_latents, input_offset)
        out = []
        for offset in range(k):
            step = start + offset
            frame = step + cfg.future_frames - 1 if offset == 0 else -1
            if self.step_route is not None:
                logits = self._route_position(state, input_latents, step, frame, input_offset)
            else:
                logits = self._forward_positions(
                    state, input_latents, [step], [frame], input_offset
                )[:, 0]
            if state.guided:
                batch = state.inst.shape[0]
                logits = guided_logits(logits[:batch], logits[batch:], sampling.guidance)
            out.append(self.emit(state, logits, sampling, generator,
                                 None if forced is None else forced[:, :, offset], step))
        state.step = start + k
        state.pending = k if k > 1 else 0
        return torch.stack(out, dim=-1)

    def emit(
        self,
        state: GenerationState,
        logits: torch.Tensor,
        sampling: SamplingConfig,
        generator: torch.Generator | None,
        forced: torch.Tensor | None,
        step: int,
    ) -> torch.Tensor:
        """Sample (or take ``forced``) the delayed tokens ``[B, K]`` of ``step`` from its
        ``logits [B, K, V']``, force the delay pattern's pads and append them to ``state``."""
        tokens = sample_tokens(
            logits,
            sampling.temperature,
            sampling.top_k,
            generator,
            valid_vocab=self.config.codebook_size,
        )
        if forced is not None:
            tokens = forced
        return self.append_tokens(state, tokens, step)

    def append_tokens(self, state: GenerationState, tokens: torch.Tensor, step: int
                      ) -> torch.Tensor:
        """Force the delay pattern's pads into the delayed tokens ``[B, K]`` of ``step`` and
        append them to ``state`` (what :meth:`emit` does after sampling)."""
        tokens = self._apply_pads(tokens, step)
        state.tokens.append(tokens)
        return tokens

    def _refeed_fused(
        self, state: GenerationState, input_latents: torch.Tensor, input_offset: int
    ) -> None:
        """Replace the previous chunk's token-only positions by fused ones."""
        for cache in state.caches:
            cache.rollback(state.pending)
        steps = list(range(state.step - state.pending, state.step))
        frames = [s + self.config.future_frames - 1 for s in steps]
        self._forward_positions(state, input_latents, steps, frames, input_offset)
        state.pending = 0

    def _forward_positions(
        self,
        state: GenerationState,
        input_latents: torch.Tensor,
        steps: list[int],
        frames: list[int],
        input_offset: int = 0,
    ) -> torch.Tensor:
        batch = state.inst.shape[0]
        device = input_latents.device
        inst = state.inst
        prev = [state.token(s - 1) if s > 0 else None for s in steps]
        tokens = torch.stack(
            [
                p
                if p is not None
                else torch.full(
                    (batch, self.config.num_codebooks), -1, dtype=torch.long, device=device
                )
                for p in prev
            ],
            dim=-1,
        )
        length = input_offset + input_latents.shape[-1]  # frames heard, in stream frames
        frames_t = torch.tensor(frames, device=device)
        valid = (frames_t >= 0) & (frames_t < length)
        heard = None  # nothing heard yet (t_f < 0): every position is "no input"
        if bool(valid.any()):
            heard = self._heard(input_latents, frames_t[valid], input_offset)
            heard = heard[:, (frames_t - int(frames_t[valid].min())).clamp(0, heard.shape[1] - 1)]
        if state.guided:  # the second half of the batch is the same streams, hearing nothing
            tokens, inst = tokens.repeat(2, 1, 1), inst.repeat(2)
            valid = torch.cat([valid.expand(batch, -1), valid.new_zeros(batch, len(steps))])
            heard = None if heard is None else heard.repeat(2, 1, 1)
        fused = self.fuse(heard, valid, self.embed_tokens(tokens, inst))
        positions = torch.tensor(steps, device=device)
        hidden = self.backbone(fused, positions=positions, caches=state.caches)
        return self.logits(hidden)

    def _route_position(
        self,
        state: GenerationState,
        input_latents: torch.Tensor,
        step: int,
        frame: int,
        input_offset: int,
    ) -> torch.Tensor:
        """:meth:`_forward_positions` of one position through :attr:`step_route` (a
        :class:`~stemstream.model.decode_step.DecodeStep`, usually compiled): the same
        logits ``[B, K, V]`` and cache contents."""
        device = state.inst.device
        caches = state.caches
        kv, views = stack_caches(caches)
        cache = caches[0]
        capacity = cache.capacity
        if cache.window is None and cache.length >= capacity:
            raise CacheOverflowError(
                f"KV cache overflow: {cache.length} cached positions fill its capacity of "
                f"{capacity}; use a larger max_seq_len or a ring cache (window=...)"
            )
        slot = cache.length % capacity
        tokens, inst = self.previous_tokens(state, step), state.inst
        window, valid, has_input = self.step_window(input_latents, frame, input_offset)
        hears = torch.full((inst.shape[0],), has_input, device=device)
        if state.guided:  # the second half: the same streams hearing nothing
            tokens, inst, window = tokens.repeat(2, 1), inst.repeat(2), window.repeat(2, 1, 1)
            hears = torch.cat([hears, torch.zeros_like(hears)])
        position = torch.tensor(step, device=device)
        rotation = torch.view_as_real(self.backbone.rope.rotations(position[None]))[0]
        # a compiled step assumes the example's (contiguous) strides
        logits, new = self.step_route(
            tokens.contiguous(),
            inst.contiguous(),
            window.contiguous(),
            valid,
            hears,
            rotation,
            position,
            torch.tensor(slot, device=device),
            torch.tensor(cache.window or NO_WINDOW, device=device),
            cache.positions,
            views,
        )
        kv[:, :, :, :, slot] = new
        cache.positions[slot] = step
        cache.next_position.fill_(step + 1)
        for each in caches:
            each.length += 1
            each.filled = max(each.filled, slot + 1)
        return logits

    def previous_tokens(self, state: GenerationState, step: int) -> torch.Tensor:
        """The tokens ``[B, K]`` position ``step`` embeds: the previous step's, or ``-1`` (the
        instrument position) at step 0."""
        if step > 0:
            return state.token(step - 1)
        return torch.full((state.inst.shape[0], self.config.num_codebooks), -1,
                          dtype=torch.long, device=state.inst.device)

    def step_window(
        self, input_latents: torch.Tensor, frame: int, input_offset: int
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """What one generation position whose newest visible frame is ``frame`` reads, for a
        :class:`~stemstream.model.decode_step.DecodeStep`: the raw input latents of frames
        ``frame - F + 1 .. frame`` ``[B, F, D_in]`` (zeros before the stream), which of them
        exist ``[F]``, and whether the position hears input at all."""
        batch, device = input_latents.shape[0], input_latents.device
        span = self.input_context + 1
        length = input_offset + input_latents.shape[-1]
        if not 0 <= frame < length:
            window = input_latents.new_zeros(batch, span, self.config.input_channels)
            return window, torch.zeros(span, dtype=torch.bool, device=device), False
        kept = self._first_needed(frame, input_offset)
        window = input_latents[..., kept - input_offset : frame + 1 - input_offset]
        window = window.transpose(1, 2)
        missing = span - window.shape[1]
        if missing:
            window = F.pad(window, (0, 0, missing, 0))
        valid = torch.arange(frame - span + 1, frame + 1, device=device) >= 0
        return window, valid, True

    def _heard(self, input_latents: torch.Tensor, frames: torch.Tensor, offset: int):
        """:meth:`condition` of stream frames ``min(frames) .. max(frames)`` (``[B, n, D]``),
        computed from the input kept since ``offset`` exactly as over the whole stream."""
        lo, hi = int(frames.min()), int(frames.max())
        first = self._first_needed(lo, offset)
        window = input_latents[..., first - offset : hi + 1 - offset].transpose(1, 2)
        return self.condition(window)[:, lo - first :]

    def _first_needed(self, frame: int, offset: int) -> int:
        """The first stream frame that hearing ``frame`` reads; an error if the caller dropped
        it (``offset``: the first frame kept)."""
        first = max(0, frame - self.input_context)
        if first < offset:
            raise ConfigError(
                f"input frame {first} was dropped (input_offset = {offset}); the model hears "
                f"{self.input_context} frames before the newest"
            )
        return first

    def _apply_pads(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Codebook ``q`` has no frame before step ``q``: force the pad there."""
        q = torch.arange(self.config.num_codebooks, device=tokens.device)
        return torch.where((step - q >= 0)[None], tokens, self.delay.pad_id)


@dataclass
class GenerationState:
    """Explicit streaming state: instrument ``inst [B]``, per-layer caches, emitted delayed
    tokens per step (``[B, K]`` each, from step ``token_base`` on), the next step, and how many
    token-only chunk positions are still in the caches."""

    inst: torch.Tensor
    caches: list[KVCache]
    tokens: list[torch.Tensor]
    step: int
    pending: int
    token_base: int = 0
    guided: bool = False  # the caches hold 2B streams: the second B hear no input

    def token(self, step: int) -> torch.Tensor:
        """The delayed tokens ``[B, K]`` emitted at ``step``."""
        last = self.token_base + len(self.tokens) - 1
        if not self.token_base <= step <= last:
            raise IndexError(f"tokens of step {step} are not kept ({self.token_base}..{last})")
        return self.tokens[step - self.token_base]

    def forget_tokens(self, keep: int) -> None:
        """Drop all but the newest ``keep`` steps' tokens (generation needs the last
        ``k + 1``), so an endless stream holds constant memory."""
        drop = max(0, len(self.tokens) - keep)
        del self.tokens[:drop]
        self.token_base += drop
