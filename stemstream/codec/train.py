"""`stemstream codec train`: one resumable training loop for every codec architecture.

DAC's recipe: multi-scale mel L1 (x15) + multi-resolution STFT + optional waveform L1,
commitment (and, for gradient-trained codebooks, codebook) losses, quantizer dropout, and an
optional adversarial phase (multi-period + banded multi-resolution STFT discriminators with
feature matching). Crops are stems, sub-mixes and mixtures (:mod:`stemstream.data.crops`).

Every ``checkpoint_every`` steps the whole state (codec, discriminator, optimizers, step, numpy
and torch RNG) goes to ``OUT/checkpoints/step_XXXXXXX.safetensors`` atomically; rerunning the
same command resumes from the newest one and continues bit-identically. Per-codebook usage
and perplexity are logged, and a collapse detector warns (or stops) when a codebook falls to a
handful of entries.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from stemstream import checkpoint
from stemstream.codec.base import Codec
from stemstream.config import to_dict
from stemstream.data.crops import CropConfig, CropSampler
from stemstream.errors import ConfigError
from stemstream.schedule import warmup_cosine
from stemstream.training import TrainLoop, pick_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossWeights:
    mel: float = 15.0
    stft: float = 2.0
    waveform: float = 0.0
    phase: float = 0.0  # InstantaneousFrequencyLoss
    frame_magnitude: float = 0.0  # FrameCodec: L1 between decoder and target log-magnitudes
    chroma: float = 0.0  # ChromaLoss (pitch-class profiles)
    commitment: float = 0.25
    codebook: float = 1.0
    adversarial: float = 1.0
    feature_matching: float = 2.0


@dataclass(frozen=True)
class GANConfig:
    enabled: bool = False
    start_step: int = 0
    lr: float = 1e-4
    channels: int = 16
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)
    fft_sizes: tuple[int, ...] = (1024, 512, 256)


@dataclass(frozen=True)
class CodecTrainConfig:
    """Everything a codec training run needs (``configs/codec/*.yaml``)."""

    corpus: Path = Path("corpora/synth20h")
    out_dir: Path = Path("runs/codec")
    init_from: Path | None = None  # start from these codec weights (fine-tuning)
    # FrameCodec only: train the decoder alone. The encoder and quantizer are frozen, so the
    # codes of every audio stay the same and token dumps and language models trained on them
    # remain valid. Each item is decoded from the first d levels, d uniform over
    # ``decoder_codebooks`` (all levels when empty).
    freeze_tokens: bool = False
    decoder_codebooks: tuple[int, ...] = ()
    codec: dict[str, Any] = field(default_factory=lambda: {"arch": "frame", "preset": "tiny"})
    crops: CropConfig = field(default_factory=CropConfig)
    train_split: str = "train"
    valid_split: str = "validation"
    max_valid_tracks: int = 8
    valid_batches: int = 4
    batch_size: int = 16
    steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 200
    betas: tuple[float, ...] = (0.8, 0.99)
    weight_decay: float = 0.01
    grad_clip: float = 3.0
    mel_windows: tuple[int, ...] = (32, 64, 128, 256, 512, 1024, 2048)
    mel_bins: tuple[int, ...] = (5, 10, 20, 40, 80, 160, 320)
    losses: LossWeights = field(default_factory=LossWeights)
    gan: GANConfig = field(default_factory=GANConfig)
    dead_code_every: int = 20
    dead_code_threshold: float = 0.02
    collapse_perplexity: float = 4.0
    stop_on_collapse: bool = False
    log_every: int = 25
    valid_every: int = 250
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    seed: int = 0
    device: str = "auto"
    threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default

    def __post_init__(self):
        for name in ("batch_size", "steps", "log_every", "valid_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.mel_windows) != len(self.mel_bins):
            raise ConfigError("mel_windows and mel_bins must have the same length")
        if "arch" not in self.codec:
            raise ConfigError("codec.arch is required (frame or dac)")
        if (self.freeze_tokens or self.losses.frame_magnitude) and self.codec["arch"] != "frame":
            raise ConfigError("freeze_tokens and losses.frame_magnitude need codec.arch: frame")
        if self.decoder_codebooks and not self.freeze_tokens:
            raise ConfigError("decoder_codebooks is only used with freeze_tokens: true")


class TrainForward(NamedTuple):
    audio: torch.Tensor  # [B, 1, N]
    codes: torch.Tensor  # [B, K, T]
    losses: dict[str, torch.Tensor]
    log_mag: torch.Tensor | None = None  # FrameCodec: the decoder's log-magnitudes [B, F, T]


def build_codec(spec: dict[str, Any]) -> Codec:
    """``{"arch": "frame"|"dac", "preset": NAME, **field overrides}`` -> a fresh codec."""
    from dataclasses import asdict

    from stemstream.config import from_dict

    spec = dict(spec)
    arch = spec.pop("arch")
    preset = spec.pop("preset", None)
    if arch == "frame":
        from stemstream.codec.framecodec import FrameCodec, FrameCodecConfig

        base = FrameCodecConfig.preset(preset) if preset else FrameCodecConfig()
        return FrameCodec(from_dict(FrameCodecConfig, asdict(base) | spec, "codec"))
    if arch == "dac":
        from stemstream.codec.dac import DAC, DACConfig

        base = DACConfig.preset(preset) if preset else DACConfig()
        return DAC(from_dict(DACConfig, asdict(base) | spec, "codec"))
    raise ConfigError(f"unknown codec arch {arch!r}; choose frame or dac")


def train_forward(codec: Codec, wave: torch.Tensor) -> TrainForward:
    """Architecture-specific training pass with a common result."""
    from stemstream.codec.framecodec import FrameCodec

    if isinstance(codec, FrameCodec):
        q = codec.quantizer(codec.latents(wave))
        audio, log_mag = codec.decode_with_magnitudes(q.quantized)
        return TrainForward(audio, q.codes, {"commitment": q.commitment_loss}, log_mag)
    out = codec(wave)
    return TrainForward(
        out.audio, out.codes, {"commitment": out.commitment_loss, "codebook": out.codebook_loss}
    )


def codebook_stats(codes: torch.Tensor, codebook_size: int) -> tuple[list[float], list[float]]:
    """Per level: fraction of entries used and perplexity, from long ``[B, K, T]`` codes."""
    usage, perplexity = [], []
    for level in codes.transpose(0, 1).reshape(codes.shape[1], -1):
        counts = torch.bincount(level, minlength=codebook_size).double()
        p = counts / counts.sum()
        usage.append(float((counts > 0).double().mean()))
        entropy = -(p[p > 0] * p[p > 0].log()).sum()
        perplexity.append(float(entropy.exp()))
    return usage, perplexity


def _frame_magnitude_loss(log_mag: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between log-magnitudes floored at -60 dB below the target's peak per item, so that
    bins well below audibility do not dominate."""
    floor = target.flatten(1).amax(1)[:, None, None] - math.log(1e3)
    return F.l1_loss(torch.maximum(log_mag, floor), torch.maximum(target, floor))


def _lr_factor(step: int, config: CodecTrainConfig) -> float:
    return warmup_cosine(step, config.warmup_steps, config.steps, config.min_lr_ratio)


class CodecTrainer(TrainLoop):
    """Holds the run's state; :meth:`run` trains to ``config.steps`` (resuming if possible;
    the loop is :class:`~stemstream.training.TrainLoop`'s)."""

    bar_label = "codec"

    def __init__(self, config: CodecTrainConfig):
        from stemstream.codec.losses import (
            ChromaLoss,
            InstantaneousFrequencyLoss,
            MultiResolutionSTFTLoss,
            MultiScaleMelLoss,
        )

        self.config = config
        device = pick_device(config.device, config.threads)
        self.device = torch.device(device)
        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.codec = build_codec(config.codec).to(self.device)
        sr = self.codec.sample_rate
        self.mel = MultiScaleMelLoss(sr, config.mel_windows, config.mel_bins).to(self.device)
        self.stft = MultiResolutionSTFTLoss().to(self.device)
        self.phase_loss = InstantaneousFrequencyLoss().to(self.device)
        self.chroma_loss = ChromaLoss(sr).to(self.device)
        if config.freeze_tokens:
            for module in self.codec.token_modules():
                module.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.codec.parameters() if p.requires_grad],
            lr=config.lr,
            betas=tuple(config.betas),
            weight_decay=config.weight_decay,
        )
        self.disc = self.disc_optimizer = None
        if config.gan.enabled:
            from stemstream.codec.discriminators import Discriminator

            gan = config.gan
            self.disc = Discriminator(gan.periods, gan.fft_sizes, gan.channels).to(self.device)
            self.disc_optimizer = torch.optim.AdamW(
                self.disc.parameters(), lr=gan.lr, betas=tuple(config.betas)
            )
        self.setup_loop(config, config.out_dir, config.keep_checkpoints)
        self._train = self._valid = None
        self._seen = 0  # training samples since this run started

    # ----------------------------------------------------------------- data (lazy)
    @property
    def train_data(self) -> CropSampler:
        if self._train is None:
            self._train = CropSampler(
                self.config.corpus,
                self.config.train_split,
                self.codec.sample_rate,
                self.config.crops,
            )
            log.info("train crops from %.1f min of audio", self._train.seconds / 60)
        return self._train

    def valid_batches(self) -> list[torch.Tensor]:
        """Fixed validation crops (same every time: seeded independently of training)."""
        if self._valid is None:
            from dataclasses import replace

            crops = replace(self.config.crops, max_tracks=self.config.max_valid_tracks)
            sampler = CropSampler(
                self.config.corpus, self.config.valid_split, self.codec.sample_rate, crops
            )
            rng = np.random.default_rng(12345)
            self._valid = [
                sampler.batch(self.config.batch_size, rng) for _ in range(self.config.valid_batches)
            ]
        return self._valid

    # ------------------------------------------------------------------- one step
    def train_step(self, wave: torch.Tensor) -> dict[str, float]:
        cfg, w = self.config, self.config.losses
        self.codec.train()
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * _lr_factor(self.step, cfg)
        if cfg.freeze_tokens:
            out = self._frozen_token_forward(wave)
        else:
            out = train_forward(self.codec, wave)
        recon = out.audio
        losses = {"mel": self.mel(recon, wave), "stft": self.stft(recon, wave)}
        if w.frame_magnitude:
            losses["frame_magnitude"] = _frame_magnitude_loss(
                out.log_mag, self.codec.frame_log_magnitudes(wave)
            )
        if w.waveform:
            losses["waveform"] = torch.nn.functional.l1_loss(recon, wave)
        if w.phase:
            losses["phase"] = self.phase_loss(recon, wave)
        if w.chroma:
            losses["chroma"] = self.chroma_loss(recon, wave)
        losses.update(out.losses)
        use_gan = self.disc is not None and self.step >= cfg.gan.start_step
        if use_gan:
            from stemstream.codec.losses import (
                discriminator_adv_loss,
                feature_matching_loss,
                generator_adv_loss,
            )

            d_loss = discriminator_adv_loss(self.disc(wave), self.disc(recon.detach()))
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(self.disc.parameters(), 10.0)
            self.disc_optimizer.step()
            real, fake = self.disc(wave), self.disc(recon)
            losses["adversarial"] = generator_adv_loss(fake)
            losses["feature_matching"] = feature_matching_loss(real, fake)
        total = sum(getattr(w, name) * value for name, value in losses.items())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.codec.parameters(), cfg.grad_clip)
        self.optimizer.step()
        dead_codes = cfg.dead_code_every and not cfg.freeze_tokens
        if dead_codes and (self.step + 1) % cfg.dead_code_every == 0:
            self._restart_dead_codes(wave)
        metrics = {f"loss/{k}": float(v.detach()) for k, v in losses.items()}
        metrics["loss/total"] = float(total.detach())
        metrics["grad_norm"] = float(grad_norm)
        if use_gan:
            metrics["loss/discriminator"] = float(d_loss.detach())
        self._last_codes = out.codes.detach()
        return metrics

    def _frozen_token_forward(self, wave: torch.Tensor) -> TrainForward:
        """Codes from the frozen encoder (no codebook updates), decoded at a random depth."""
        with torch.no_grad():
            codes = self.codec.quantizer.encode(self.codec.latents(wave), self.codec.num_codebooks)
        choices = self.config.decoder_codebooks or (self.codec.num_codebooks,)
        depths = torch.as_tensor(self.rng.choice(choices, size=codes.shape[0]))
        audio, log_mag = self.codec.decode_at_depths(codes, depths)
        return TrainForward(audio, codes, {}, log_mag)

    @torch.no_grad()
    def _restart_dead_codes(self, wave: torch.Tensor) -> None:
        quantizer = getattr(self.codec, "quantizer", None)
        if hasattr(quantizer, "restart_dead"):
            latent = self.codec.latents(wave)
            restarted = quantizer.restart_dead(latent, self.config.dead_code_threshold)
            if any(restarted):
                log.debug("step %d: restarted dead codes %s", self.step, restarted)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        from stemstream.codec.losses import si_sdr

        self.codec.eval()
        sums: dict[str, float] = {}
        all_codes = []
        batches = self.valid_batches()
        for batch in batches:
            wave = batch.to(self.device)
            codes = self.codec.encode(wave)
            all_codes.append(codes)
            for k in sorted({min(4, self.codec.num_codebooks), self.codec.num_codebooks}):
                recon = self.codec.decode(codes[:, :k])[..., : wave.shape[-1]]
                sums[f"valid/mel_k{k}"] = sums.get(f"valid/mel_k{k}", 0.0) + float(
                    self.mel(recon, wave)
                ) / len(batches)
                sums[f"valid/si_sdr_k{k}"] = sums.get(f"valid/si_sdr_k{k}", 0.0) + float(
                    si_sdr(recon, wave).mean()
                ) / len(batches)
        usage, perplexity = codebook_stats(torch.cat(all_codes), self.codec.codebook_size)
        for k, (u, p) in enumerate(zip(usage, perplexity, strict=True)):
            sums[f"codebook/usage_{k}"] = u
            sums[f"codebook/perplexity_{k}"] = p
        collapsed = [k for k, p in enumerate(perplexity) if p < self.config.collapse_perplexity]
        sums["codebook/collapsed"] = float(len(collapsed))
        if collapsed:
            log.warning(
                "step %d: codebooks %s collapsed (perplexity < %.1f)",
                self.step,
                collapsed,
                self.config.collapse_perplexity,
            )
        return sums

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        tensors = {f"codec/{k}": v for k, v in self.codec.state_dict().items()}
        opt_t, opt_m = checkpoint.flatten_optimizer(self.optimizer, "optim")
        rng_t, rng_m = checkpoint.rng_state(self.rng)
        tensors |= opt_t | rng_t
        meta = {
            "kind": "codec-train",
            "step": self.step,
            "config": to_dict(self.config),
            "codec": self.codec.config_dict(),
            "codec_class": type(self.codec).__name__,
            "optim": opt_m,
            "rng": rng_m,
        }
        if self.disc is not None:
            tensors |= {f"disc/{k}": v for k, v in self.disc.state_dict().items()}
            d_t, d_m = checkpoint.flatten_optimizer(self.disc_optimizer, "disc_optim")
            tensors |= d_t
            meta["disc_optim"] = d_m
        return tensors, meta

    def load_checkpoint(self, path: Path) -> None:
        tensors, meta = checkpoint.load(path, map_location=self.device)
        if meta.get("kind") != "codec-train":
            raise checkpoint.CheckpointError(f"{path}: not a codec training checkpoint")
        if meta["codec"] != self.codec.config_dict():
            raise checkpoint.CheckpointError(
                f"{path}: was trained with codec {meta['codec']}, config asks for "
                f"{self.codec.config_dict()}"
            )
        self.codec.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("codec/")})
        checkpoint.restore_optimizer(self.optimizer, tensors, meta["optim"], "optim")
        if self.disc is not None and "disc_optim" in meta:
            self.disc.load_state_dict(
                {k[5:]: v for k, v in tensors.items() if k.startswith("disc/")}
            )
            checkpoint.restore_optimizer(
                self.disc_optimizer, tensors, meta["disc_optim"], "disc_optim"
            )
        checkpoint.restore_rng(tensors, meta["rng"], self.rng)
        self.step = int(meta["step"])

    # ----------------------------------------------------------------------- loop
    def on_fresh_start(self) -> None:
        if self.config.init_from is not None:
            from stemstream.codec.registry import get_codec

            self.codec.load_state_dict(get_codec(self.config.init_from).state_dict())
            log.info("initialised codec weights from %s", self.config.init_from)

    def advance(self) -> dict[str, float]:
        wave = self.train_data.batch(self.config.batch_size, self.rng).to(self.device)
        metrics = self.train_step(wave)
        self._seen += wave.shape[0] * wave.shape[-1]
        if (self.step + 1) % self.config.log_every == 0:
            seconds = self._seen / self.codec.sample_rate
            metrics["speed/x_realtime"] = seconds / max(self.elapsed, 1e-9)
            usage, _ = codebook_stats(self._last_codes, self.codec.codebook_size)
            metrics["codebook/train_usage_min"] = min(usage)
        return metrics

    def bar_postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"mel": f"{metrics['loss/mel']:.3f}", "xrt": f"{metrics['speed/x_realtime']:.0f}"}

    def after_validation(self, metrics: dict[str, float]) -> None:
        if self.config.stop_on_collapse and metrics["codebook/collapsed"]:
            self.save_checkpoint()
            raise RuntimeError(f"codebook collapse at step {self.step}")
