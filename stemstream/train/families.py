"""Model families the training loop can build, by the config's ``family`` key.

A family turns a :class:`~stemstream.train.config.ModelSpec` plus the dump's facts into a
model config dataclass, and rebuilds the model from that config's dict (for resume and for
inference). Every family's model has the same training call:
``model(input_latents [B, D_in, T_in], target_codes [B, K, T], inst [B]) -> output.loss``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from torch import nn

from stemstream.config import from_dict
from stemstream.errors import ConfigError
from stemstream.train.config import ModelSpec


class DumpFacts(NamedTuple):
    """What a family needs to know about the data: input-latent width ``D_in``, codebook
    size ``V``, instrument classes and the resolved ``t_f`` in frames."""

    input_dim: int
    codebook_size: int
    num_classes: int
    future_frames: int


@dataclass(frozen=True)
class Family:
    """``make_config(spec, facts)`` -> a config dataclass; ``config_class`` / ``model_class``
    rebuild the model from ``asdict(config)``."""

    config_class: type
    model_class: type[nn.Module]
    make_config: Callable[[ModelSpec, DumpFacts], Any]

    def build(self, config: Any) -> nn.Module:
        return self.model_class(config)

    def config_from_dict(self, data: dict[str, Any]) -> Any:
        return from_dict(self.config_class, data, "model")


def _backbone(spec: ModelSpec):
    from stemstream.model.transformer import TransformerConfig

    base = asdict(TransformerConfig.preset(spec.backbone))
    return from_dict(TransformerConfig, base | dict(spec.backbone_overrides), "backbone")


def _streaming() -> Family:
    from stemstream.model.streaming import StreamingDecoder, StreamingDecoderConfig

    def make(spec: ModelSpec, facts: DumpFacts) -> StreamingDecoderConfig:
        return StreamingDecoderConfig(
            backbone=_backbone(spec),
            num_codebooks=spec.num_codebooks,
            codebook_size=facts.codebook_size,
            input_dim=facts.input_dim,
            num_classes=facts.num_classes,
            future_frames=facts.future_frames,
            chunk_frames=spec.chunk_frames,
            input_encoder=spec.input_encoder,
            input_window=spec.input_window,
            input_features=spec.input_features,
            beat_lead_seconds=spec.beat_lead_seconds,
            history_dropout=spec.history_dropout,
            history_noise=spec.history_noise,
            history_span=spec.history_span,
            history_span_frames=spec.history_span_frames,
            history_shift=spec.history_shift,
            history_shift_frames=spec.history_shift_frames,
            onset_loss_weight=spec.onset_loss_weight,
            anticipation_frames=spec.anticipation_frames,
            anticipation_loss_weight=spec.anticipation_loss_weight,
            input_dropout=spec.input_dropout,
        )

    return Family(StreamingDecoderConfig, StreamingDecoder, make)


def _offline(module: str, config_name: str, model_name: str) -> Callable[[], Family]:
    """The offline baselines take the same facts minus ``t_f`` / ``k`` (they hear everything)."""

    def factory() -> Family:
        import importlib

        mod = importlib.import_module(module)
        config_class, model_class = getattr(mod, config_name), getattr(mod, model_name)

        def make(spec: ModelSpec, facts: DumpFacts) -> Any:
            streaming_only = ("history_dropout", "history_noise", "history_span",
                              "history_shift", "onset_loss_weight", "input_dropout",
                              "anticipation_frames", "anticipation_loss_weight")
            for name in streaming_only:
                if getattr(spec, name):
                    raise ConfigError(f"model.{name} applies to the streaming family only")
            if spec.input_encoder != "frame":
                raise ConfigError("model.input_encoder applies to the streaming family only")
            if spec.input_features:
                raise ConfigError("model.input_features applies to the streaming family only")
            return config_class(
                backbone=_backbone(spec),
                num_codebooks=spec.num_codebooks,
                codebook_size=facts.codebook_size,
                input_dim=facts.input_dim,
                num_classes=facts.num_classes,
            )

        return Family(config_class, model_class, make)

    return factory


FAMILIES: dict[str, Callable[[], Family]] = {
    "streaming": _streaming,
    "prefix": _offline("stemstream.model.prefix", "PrefixDecoderConfig", "PrefixDecoder"),
    "stemgen": _offline("stemstream.model.stemgen", "StemGenConfig", "StemGenModel"),
}
"""Family name -> a factory (imports stay lazy). Other families register here."""


def register_family(name: str, factory: Callable[[], Family]) -> None:
    """Make ``family: name`` available to training configs (and its checkpoints loadable)."""
    from stemstream.model.checkpoints import register_architecture

    def classes() -> tuple[type, type]:
        family = factory()
        return family.config_class, family.model_class

    FAMILIES[name] = factory
    register_architecture(name, classes)


def get_family(name: str) -> Family:
    """The family called ``name``; :class:`ConfigError` listing the known ones otherwise."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[name]()
