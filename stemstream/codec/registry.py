"""Resolve a codec by name or path: what ``--codec`` options accept.

* ``default`` — the shipped codec (``stemstream/assets/codecs/cpu16k.safetensors``);
* ``mock`` — :class:`~stemstream.codec.mock.MockCodec` (tests, demos without weights);
* a ``.safetensors`` file written by :func:`~stemstream.codec.checkpoint.save_codec`;
* a codec *training* checkpoint (``runs/.../checkpoints/step_*.safetensors``);
* a descript-audio-codec ``.pth`` (official DAC weights or the paper's causal DAC).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stemstream.codec.base import Codec, CodecError, describe_identity, same_tokens

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "codecs"
DEFAULT_CODEC = ASSETS / "cpu16k.safetensors"


def export_training_checkpoint(path: str | Path, out: str | Path) -> Path:
    """Write the codec held in a training checkpoint as a standalone codec file."""
    from stemstream.codec.checkpoint import save_codec

    return save_codec(codec_from_training_checkpoint(path), out)


def codec_from_training_checkpoint(path: str | Path) -> Codec:
    from stemstream import checkpoint
    from stemstream.codec.checkpoint import CODEC_CLASSES

    tensors, meta = checkpoint.load(path)
    if meta.get("kind") != "codec-train":
        raise CodecError(f"{path}: not a codec training checkpoint")
    codec_class, config_class = CODEC_CLASSES[meta.get("codec_class", "FrameCodec")]
    codec = codec_class(config_class.from_dict(meta["codec"]))
    codec.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("codec/")})
    return codec.eval()


def get_codec(spec: str | Path = "default") -> Codec:
    """A ready (CPU, eval-mode) codec from a name or a path; see the module docstring."""
    from stemstream.codec.checkpoint import load_codec, load_dac_checkpoint

    name = str(spec)
    if name == "mock":
        from stemstream.codec.mock import MockCodec

        return MockCodec().eval()
    if name == "default":
        if not DEFAULT_CODEC.is_file():
            raise CodecError(
                f"the default codec is not in this checkout ({DEFAULT_CODEC}); train one with "
                "`stemstream codec train --config configs/codec/cpu16k.yaml` or pass --codec"
            )
        return load_codec(DEFAULT_CODEC)
    path = Path(name)
    if not path.is_file():
        raise CodecError(f"no codec named {name!r} (use default, mock or a file path)")
    if path.suffix == ".pth":
        return load_dac_checkpoint(path).eval()
    from stemstream import checkpoint

    try:
        if checkpoint.read_meta(path).get("kind") == "codec-train":
            return codec_from_training_checkpoint(path)
    except checkpoint.CheckpointError:
        pass
    return load_codec(path)


def codec_for(identity: dict[str, Any], spec: str | None) -> Codec:
    """The codec a model was trained with: ``spec`` (or ``default``) when its tokens match the
    checkpoint's record (:func:`~stemstream.codec.base.same_tokens`: a codec whose decoder
    alone was fine-tuned still matches); a weight-free codec (MockCodec) rebuilt from its
    config."""
    from stemstream.codec.checkpoint import CODEC_CLASSES

    recorded = identity.get("weights_hash") or identity.get("tokens_hash")
    tried = []
    for candidate in [spec] if spec else ["default"]:
        try:
            codec = get_codec(candidate)
        except CodecError as err:
            tried.append(f"{candidate}: {err}")
            continue
        if recorded is None or same_tokens(identity, codec.codec_identity()):
            return codec
        tried.append(f"{candidate}: {describe_identity(codec.codec_identity())}")
    name = identity.get("class")
    if spec is None and name == "MockCodec" and name in CODEC_CLASSES:
        codec_class, config_class = CODEC_CLASSES[name]
        codec = codec_class(config_class.from_dict(identity["config"])).eval()
        if same_tokens(identity, codec.codec_identity()):
            return codec
    raise CodecError(
        f"the model was trained with codec {describe_identity(identity)}; pass it with "
        f"--codec ({'; '.join(tried)})"
    )
