"""`stemstream train`: one resumable training loop for every model family (SPEC section 6).

Data come from a token dump (:mod:`stemstream.data.tokens`); the frozen codec the dump was made
with turns input codes into the model's input latents. Each epoch visits the training split in
a permutation seeded by ``(seed, epoch)``; the *data position* ``(epoch, batch)`` is stored in
every checkpoint with the model, optimizer, RNG and step, so a run killed at any moment and
restarted with the same command continues bit-identically from its newest checkpoint.

Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in DistributedDataParallel, each
global batch is split by rank, and only rank 0 logs and writes checkpoints.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from stemstream import __version__, checkpoint
from stemstream.codec.base import describe_identity, same_tokens
from stemstream.config import to_dict
from stemstream.data.tokens import (
    TokenBatch,
    TokenDataset,
    TrackCrops,
    collate,
    is_track_dump,
    read_meta,
    read_track_meta,
)
from stemstream.errors import ConfigError
from stemstream.model.checkpoints import (  # noqa: F401 (the training API re-exports them)
    MODEL_KIND,
    STORE_DTYPES,
    TRAIN_KIND,
    LoadedModel,
    export_checkpoint,
    load_model,
)
from stemstream.model.streaming import StreamingDecoder
from stemstream.schedule import warmup_cosine
from stemstream.train.config import ModelTrainConfig, resolve_future_frames
from stemstream.train.distill import GuidedTeacher, distill_loss, mismatch_inputs
from stemstream.train.families import DumpFacts, get_family
from stemstream.train.inputs import BatchInputs
from stemstream.train.reliance import measure_reliance, onset_window, token_frames, token_onsets
from stemstream.training import TrainLoop, pick_device

log = logging.getLogger(__name__)

def _check_codec(where: str, recorded: dict[str, Any], codec: dict[str, Any]) -> None:
    if not same_tokens(recorded, codec):
        raise ConfigError(
            f"{where} was made with codec {describe_identity(recorded)}, but the configured "
            f"codec is {describe_identity(codec)} (other tokens); use the dump's codec"
        )


def warm_start(model: nn.Module, path: str | Path, family: str,
               layers: tuple[int, ...] | list[int] | None = None,
               codec: dict[str, Any] | None = None, shared: bool = False) -> list[str]:
    """Load the weights of the model checkpoint at ``path`` into ``model`` (in place).

    ``layers[i]`` names the source backbone block that becomes block ``i`` (``None``: the same
    blocks in the same order). Everything else must match by name and shape; the future
    visibility and chunk size may differ (they are not weights). With ``shared``, the source
    may be of another family: only the tensors both models have (by name and shape) are
    loaded, the others keep their initialisation. With ``codec`` (an identity), the checkpoint
    must have been trained on that codec's tokens. A model that hears more input channels than
    the checkpoint (input features added) loads the checkpoint's input projections into its
    first columns and zeroes the rest (:data:`INPUT_PROJECTIONS`).

    Returns:
        The names of the model's tensors that were *not* loaded (empty unless ``shared``).

    Raises:
        CheckpointError: another kind or family of checkpoint (without ``shared``), a missing
            source block, a tensor whose shape differs, or (``shared``) no backbone tensor in
            common.
        ConfigError: the checkpoint was trained on another codec's tokens.
    """
    tensors, meta = checkpoint.load(path)
    if meta.get("kind") not in (MODEL_KIND, TRAIN_KIND):
        raise checkpoint.CheckpointError(f"{path}: not a model checkpoint ({meta.get('kind')})")
    if meta.get("family") != family and not shared:
        raise checkpoint.CheckpointError(
            f"{path}: holds a {meta.get('family')!r} model, cannot initialise a {family!r} one "
            "(init_shared loads only the tensors both families have)"
        )
    if codec is not None:
        _check_codec(f"init_from {path}", meta.get("codec", {}), codec)
    source = {k[6:]: v for k, v in tensors.items() if k.startswith("model/")}
    pattern = re.compile(r"^(.*\blayers\.)(\d+)(\..*)$")
    target = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for name, like in target.items():
        key = name
        match = pattern.match(name)
        if match and layers is not None:
            index = int(match.group(2))
            if index >= len(layers):
                raise checkpoint.CheckpointError(
                    f"init_layers names {len(layers)} blocks; the model has more ({name})"
                )
            key = f"{match.group(1)}{layers[index]}{match.group(3)}"
        if name in INPUT_PROJECTIONS and key in source and _widens(source[key], like):
            # the model hears more input channels (features) than its warm start: the old
            # columns load, the new ones start at zero, so step 0 is the warm start's function
            state[name] = torch.zeros_like(like)
            state[name][:, : source[key].shape[1]] = source[key].to(like.dtype)
            continue
        if key not in source or source[key].shape != like.shape:
            if shared and not (match and layers is not None):
                skipped.append(name)
                continue
        if key not in source:
            raise checkpoint.CheckpointError(f"{path}: has no tensor {key!r} (for {name!r})")
        if source[key].shape != like.shape:
            raise checkpoint.CheckpointError(
                f"{path}: {key!r} has shape {tuple(source[key].shape)}, the model's {name!r} "
                f"{tuple(like.shape)}"
            )
        state[name] = source[key].to(like.dtype)

    def blocks(names) -> int:
        return len({int(m.group(2)) for m in map(pattern.match, names) if m})

    if layers is not None and len(layers) != blocks(target):
        raise checkpoint.CheckpointError(
            f"init_layers names {len(layers)} blocks, the model has {blocks(target)}"
        )
    if layers is None and blocks(source) != blocks(target):
        raise checkpoint.CheckpointError(
            f"{path} has {blocks(source)} blocks, the model {blocks(target)}: choose them with "
            "init_layers"
        )
    if shared and not any(pattern.match(name) for name in state):
        raise checkpoint.CheckpointError(f"{path}: no backbone tensor in common with the model")
    model.load_state_dict(state, strict=not shared)
    return skipped


INPUT_PROJECTIONS = ("in_proj.weight", "input_encoder.aligned.weight")
"""Weights over the input channels, which a warm start may widen (see :func:`warm_start`)."""


def _widens(source: torch.Tensor, like: torch.Tensor) -> bool:
    return (source.dim() == like.dim() == 2 and source.shape[0] == like.shape[0]
            and source.shape[1] < like.shape[1])


class _Dist(NamedTuple):
    rank: int
    world: int
    local_rank: int
    owned: bool  # this trainer initialised the process group


def _init_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(0, 1, 0, False)
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]), owned)


class ModelTrainer(TrainLoop):
    """Holds the run's state; :meth:`run` trains to ``config.steps`` (resuming if possible)."""

    def __init__(self, config: ModelTrainConfig):
        from stemstream.codec.registry import get_codec
        from stemstream.data.instruments import NUM_CLASSES

        self.config = config
        device = pick_device(config.device, config.threads)
        self.dist = _init_distributed(device)
        if device == "cuda" and self.dist.world > 1:
            device = f"cuda:{self.dist.local_rank}"
        self.device = torch.device(device)

        self.track_dump = is_track_dump(config.dump_dir)
        self.dump_meta = (read_track_meta if self.track_dump else read_meta)(config.dump_dir)
        self.codec = get_codec(config.codec).to(self.device).eval().requires_grad_(False)
        self.codec_identity = self.codec.codec_identity()
        _check_codec(f"dump {config.dump_dir}", self.dump_meta["codec"], self.codec_identity)
        spec = config.model
        rate = float(self.dump_meta["frame_rate_hz"])
        dumped_future = (
            None if self.track_dump else int(self.dump_meta["window"].get("future_frames", 0))
        )
        facts = DumpFacts(
            input_dim=self.codec.latent_dim,
            codebook_size=int(self.dump_meta["codebook_size"]),
            num_classes=spec.num_classes or NUM_CLASSES,
            future_frames=resolve_future_frames(spec, rate, dumped_future),
        )
        self.family = get_family(config.family)
        self.model_config = self.family.make_config(spec, facts)
        self.crop_frames = round(config.crop_seconds * rate)
        self.train_data = self._split_data(config.train_split, config.seed)
        self.batches_per_epoch = len(self.train_data) // (config.batch_size * self.dist.world)
        if self.batches_per_epoch < 1:
            raise ConfigError(
                f"split {config.train_split!r} has {len(self.train_data)} windows, fewer than "
                f"one global batch ({config.batch_size} x {self.dist.world} processes)"
            )

        torch.manual_seed(config.seed)
        self.model = self.family.build(self.model_config).to(self.device)
        if config.init_from is not None:
            fresh = warm_start(self.model, config.init_from, config.family, config.init_layers,
                               self.codec_identity, shared=config.init_shared)
            log.info("initialised from %s (blocks %s)%s", config.init_from,
                     "all" if config.init_layers is None else list(config.init_layers),
                     f"; kept fresh: {', '.join(fresh)}" if fresh else "")
        self.teacher = None
        if config.distill_from is not None:
            self.teacher = GuidedTeacher(config.distill_from, config.distill_guidance,
                                         self.model_config, self.codec_identity, self.device)
            log.info("distilling %s sampled with guidance %s (KL at onsets x%g)",
                     config.distill_from, self.teacher.describe(), config.distill_onset_weight)
        self.net: nn.Module = self.model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.model, device_ids=ids)
        stored = getattr(self.train_data, "feature_names", ())
        self.inputs = BatchInputs(self.codec.embed,
                                  getattr(self.model_config, "input_features", ()), stored,
                                  str(config.dump_dir))
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.lr,
            betas=tuple(config.betas),
            weight_decay=config.weight_decay,
        )
        self.setup_loop(config, config.out_dir, config.keep_checkpoints)
        self.epoch = 0
        self.batch_index = 0  # next batch of ``epoch``
        self._valid: tuple[list[TokenBatch], list[TokenBatch]] | None = None
        self._aux_losses: dict[str, float] = {}
        self._batch_stream: Iterator[TokenBatch] | None = None
        self._tokens = 0  # target tokens trained on since this run started

    # ------------------------------------------------------------------------ data
    def _split_data(self, split: str, seed: int) -> TokenDataset | TrackCrops:
        """A window dump's split as stored, or random crops of a whole-track dump's."""
        k = self.config.model.num_codebooks
        if not self.track_dump:
            return TokenDataset(self.config.dump_dir, split, k)
        # the offline families hear the window itself: no look-ahead beyond it
        future = max(0, getattr(self.model_config, "future_frames", 0))
        return TrackCrops(self.config.dump_dir, split, k, self.crop_frames, future, seed)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Row order of ``epoch`` (same on every rank and every restart)."""
        return np.random.default_rng([self.config.seed, epoch]).permutation(len(self.train_data))

    def _batches(self) -> Iterator[TokenBatch]:
        """Batches from the current data position onwards, this rank's share of each."""
        from torch.utils.data import DataLoader

        size, rank = self.config.batch_size, self.dist.rank
        while True:
            if isinstance(self.train_data, TrackCrops):
                self.train_data.set_epoch(self.epoch)
            order = self.epoch_order(self.epoch)
            global_size = size * self.dist.world
            index_lists = [
                order[b * global_size + rank * size : b * global_size + (rank + 1) * size].tolist()
                for b in range(self.batch_index, self.batches_per_epoch)
            ]
            loader = DataLoader(
                self.train_data,
                batch_sampler=index_lists,
                collate_fn=collate,
                num_workers=self.config.num_workers,
                # Its own generator: making an iterator must not draw from the global RNG,
                # or a resumed run (new iterator mid-epoch) would diverge.
                generator=torch.Generator().manual_seed(self.config.seed + self.epoch),
            )
            yield from loader
            self.epoch, self.batch_index = self.epoch + 1, 0

    def valid_batches(self) -> list[TokenBatch]:
        """The fixed validation batches: the first ``valid_batches`` batches of a window
        dump's split in order, or of a whole-track dump's rows spread evenly over the split
        (one fixed crop each)."""
        return self._validation()[0]

    def _validation(self) -> tuple[list[TokenBatch], list[TokenBatch]]:
        """The validation batches and the same batches with the input of windows half the
        set away (other tracks: neighbouring rows often share one), for input reliance."""
        if self._valid is None:
            cfg = self.config
            if cfg.valid_split not in self.dump_meta["splits"]:
                log.warning("dump has no %r split: no validation", cfg.valid_split)
                self._valid = ([], [])
                return self._valid
            data = self._split_data(cfg.valid_split, cfg.seed)
            count = min(len(data), cfg.valid_batches * cfg.batch_size)
            rows = list(range(count))
            if isinstance(data, TrackCrops):
                rows = np.linspace(0, len(data) - 1, count).round().astype(int).tolist()
            examples = [data[i] for i in rows]
            shifted = examples[count // 2 :] + examples[: count // 2]
            others = [e._replace(input_codes=o.input_codes, input_features=o.input_features)
                      for e, o in zip(examples, shifted, strict=True)]
            self._valid = tuple(
                [collate(items[s : s + cfg.batch_size]) for s in range(0, count, cfg.batch_size)]
                for items in (examples, others)
            )
        return self._valid

    # --------------------------------------------------------------------- one step
    def _autocast(self):
        if self.device.type == "cuda" and self.config.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _loss(self, net: nn.Module, batch: TokenBatch) -> torch.Tensor:
        kwargs = {}
        if batch.onsets is not None and getattr(self.model, "onset_head", None) is not None:
            kwargs["onsets"] = batch.onsets.to(self.device)
        out, kl = self._forward(net, batch, self.config.distill_onset_weight,
                                self.config.distill_mismatch, **kwargs)
        # streaming models with auxiliary heads: their losses, logged beside the total
        self._aux_losses = {f"loss/{name}": float(value.detach()) for name in
                            ("onset", "anticipation")
                            if (value := getattr(out, f"{name}_loss", None)) is not None}
        if kl is None:
            return out.loss.float()
        self._aux_losses["loss/distill"] = float(kl.detach())
        weight = self.config.distill_weight
        return weight * kl + (1 - weight) * out.loss.float()

    def _forward(self, net: nn.Module, batch: TokenBatch, onset_weight: float = 1.0,
                 mismatch: float = 0.0, **kwargs) -> tuple[Any, torch.Tensor | None]:
        """The teacher-forced output of ``net`` for ``batch`` and, when distilling, its KL to
        the teacher's guided logits (``None`` otherwise), tokens at onsets counted
        ``onset_weight`` times; a share ``mismatch`` of the rows hears another row's input."""
        latents = self.inputs(batch, self.device)  # [B, D_in, T_in]
        if mismatch:
            latents = mismatch_inputs(latents, mismatch)
        target, inst = batch.target_codes.to(self.device), batch.inst_class.to(self.device)
        with self._autocast():
            out = net(latents, target, inst, **kwargs)
            if self.teacher is None:
                return out, None
            taught = self.teacher.logits(latents, target, inst)
            weights = None
            if onset_weight != 1:
                if batch.onsets is None:
                    raise ConfigError("distill_onset_weight needs a whole-track dump (it knows "
                                      "the target's onsets); this dump has none")
                at = token_onsets(onset_window(batch.onsets.to(self.device)),
                                  token_frames(out.targets))
                weights = 1 + (onset_weight - 1) * at.float()
            return out, distill_loss(out.logits, taught, out.targets, self.model.delay.pad_id,
                                     weights)

    def train_step(self, batch: TokenBatch) -> dict[str, float]:
        cfg = self.config
        self.net.train()
        lr = cfg.lr * warmup_cosine(self.step, cfg.warmup_steps, cfg.steps, cfg.min_lr / cfg.lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if isinstance(self.model, StreamingDecoder):
            progress = self.step / max(1, cfg.steps - 1)
            self.model.history_scale = 1 + (cfg.history_scale_end - 1) * min(1.0, progress)
        loss = self._loss(self.net, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        metrics = {"loss/train": float(loss.detach()), "grad_norm": float(grad_norm), "lr": lr}
        if isinstance(self.model, StreamingDecoder):
            metrics["history_scale"] = self.model.history_scale
        metrics.update(self._aux_losses)
        return metrics

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss over the fixed validation batches (``{}`` without a validation split);
        for a streaming decoder also its input reliance (:mod:`stemstream.train.reliance`)."""
        batches, others = self._validation()
        if not batches:
            return {}
        if isinstance(self.model, StreamingDecoder):
            with self._autocast():
                metrics = measure_reliance(self.model, self.inputs, batches, others)
            if self.teacher is not None:
                metrics["loss/valid_distill"] = self._valid_distill(batches)
            return metrics
        self.model.eval()
        losses = [float(self._loss(self.model, batch)) for batch in batches]
        return {"loss/valid": sum(losses) / len(losses)}

    @torch.no_grad()
    def _valid_distill(self, batches: list[TokenBatch]) -> float:
        """Mean KL from the teacher's guided logits to the model's on validation."""
        was_training = self.model.training
        self.model.eval()
        total = sum(float(self._forward(self.model, batch)[1]) for batch in batches)
        self.model.train(was_training)
        return total / len(batches)

    # ------------------------------------------------------------------ checkpoints
    def _model_meta(self) -> dict[str, Any]:
        return {
            "family": self.config.family,
            "model": to_dict(self.model_config),
            "codec": self.codec_identity,
            "stemstream_version": __version__,
        }

    def checkpoint_state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The whole state: weights, optimizer, RNGs and the data position."""
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        opt_t, opt_m = checkpoint.flatten_optimizer(self.optimizer, "optim")
        rng_t, rng_m = checkpoint.rng_state()
        meta = {
            "kind": TRAIN_KIND,
            "step": self.step,
            "data_position": {"epoch": self.epoch, "batch": self.batch_index},
            "config": to_dict(self.config),
            "optim": opt_m,
            "rng": rng_m,
        } | self._model_meta()
        return tensors | opt_t | rng_t, meta

    def load_checkpoint(self, path: Path) -> None:
        """Restore the state saved by :meth:`save_checkpoint`.

        Raises:
            CheckpointError: another kind of checkpoint, another family or model shape.
            ConfigError: the checkpoint was trained on another codec's tokens.
        """
        tensors, meta = checkpoint.load(path, map_location=self.device)
        if meta.get("kind") != TRAIN_KIND:
            raise checkpoint.CheckpointError(f"{path}: not a model training checkpoint")
        if meta.get("family") != self.config.family:
            raise checkpoint.CheckpointError(
                f"{path}: holds a {meta.get('family')!r} model, config asks for "
                f"{self.config.family!r}"
            )
        _check_codec(f"checkpoint {path}", meta.get("codec", {}), self.codec_identity)
        if meta["model"] != to_dict(self.model_config):
            raise checkpoint.CheckpointError(
                f"{path}: model config {meta['model']} differs from the configured "
                f"{to_dict(self.model_config)}"
            )
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
        checkpoint.restore_optimizer(self.optimizer, tensors, meta["optim"], "optim")
        checkpoint.restore_rng(tensors, meta["rng"])
        self.step = int(meta["step"])
        self.epoch = int(meta["data_position"]["epoch"])
        self.batch_index = int(meta["data_position"]["batch"])

    def export(self, out: str | Path) -> Path:
        """Write the current weights as an inference checkpoint (``kind: model``)."""
        tensors = {f"model/{k}": v for k, v in self.model.state_dict().items()}
        meta = {"kind": MODEL_KIND, "step": self.step} | self._model_meta()
        return checkpoint.save(out, tensors, meta)

    # ------------------------------------------------------------------------- loop
    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    def advance(self) -> dict[str, float]:
        if self._batch_stream is None:  # from the data position (set by a resume)
            self._batch_stream = self._batches()
        batch = next(self._batch_stream)
        metrics = self.train_step(batch)
        self.batch_index += 1
        self._tokens += batch.target_codes.numel() * self.dist.world
        if (self.step + 1) % self.config.log_every == 0:
            metrics["speed/tokens_per_s"] = self._tokens / max(self.elapsed, 1e-9)
        return metrics

    def bar_postfix(self, metrics: dict[str, float]) -> dict[str, str]:
        return {"loss": f"{metrics['loss/train']:.3f}",
                "tok_s": f"{metrics['speed/tokens_per_s']:.0f}"}

    def barrier(self) -> None:
        if self.dist.world > 1:
            torch.distributed.barrier()

    def time_up(self, began: float, limit: float | None) -> bool:
        if limit is None:
            return False
        flag = torch.tensor([float(time.perf_counter() - began > limit)])
        if self.dist.world > 1:  # every rank must stop at the same step
            torch.distributed.broadcast(flag, 0)
        return bool(flag.item())

    def on_exit(self) -> None:
        self._batch_stream, self._tokens = None, 0
        if self.dist.owned:
            torch.distributed.destroy_process_group()
