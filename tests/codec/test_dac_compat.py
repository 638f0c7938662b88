"""Our DAC against descript-audio-codec itself (weights, codes, audio), causal and not.

Needs the dev extras ``descript-audio-codec`` and ``einops`` (``descript-audiotools``
optional: its ``BaseModel.save`` then writes the checkpoint file). Their runtime deps
(audiotools' stack, argbind, torchaudio) are not installable here, so stub modules stand in
for ``audiotools`` and ``argbind`` while ``dac`` is imported; nothing else of theirs runs.

There is no released causal DAC package: the causal reference below is the causal fork's
architecture (slSeanWU/descript-audio-codec, ``dac/model/dac.py``, used by Wu et al.)
assembled from the real package's layers (``Snake1d``, ``WNConv1d``, ``WNConvTranspose1d``,
``ResidualVectorQuantize``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch
from codec_helpers import make_audio, randomize_
from torch import nn

from stemstream.codec import DACConfig, load_dac_checkpoint
from stemstream.codec.checkpoint import convert_dac_layout

TINY_KWARGS = {
    "encoder_dim": 4,
    "encoder_rates": [2, 4],
    "latent_dim": 16,
    "decoder_dim": 16,
    "decoder_rates": [4, 2],
    "n_codebooks": 4,
    "codebook_size": 32,
    "codebook_dim": 4,
    "sample_rate": 16000,
}


def _audiotools_base_model() -> type[nn.Module]:
    """The real ``audiotools.ml.BaseModel`` (a torch-only file) if installed, else a stand-in."""
    spec = importlib.util.find_spec("audiotools")
    if spec is not None and spec.origin is not None:
        path = Path(spec.origin).parent / "ml" / "layers" / "base.py"
        file_spec = importlib.util.spec_from_file_location("_audiotools_base", path)
        if file_spec is not None and file_spec.loader is not None and path.is_file():
            module = importlib.util.module_from_spec(file_spec)
            file_spec.loader.exec_module(module)
            return module.BaseModel

    class BaseModel(nn.Module):
        INTERN: list[str] = []
        EXTERN: list[str] = []

    return BaseModel


def _stub_modules() -> dict[str, types.ModuleType]:
    audiotools = types.ModuleType("audiotools")
    ml = types.ModuleType("audiotools.ml")
    core = types.ModuleType("audiotools.core")
    ml.BaseModel = _audiotools_base_model()
    ml.Accelerator = object
    core.util = types.SimpleNamespace()
    audiotools.ml, audiotools.core = ml, core
    audiotools.AudioSignal = audiotools.STFTParams = object
    argbind = types.ModuleType("argbind")
    argbind.bind = lambda *args, **kwargs: lambda fn: fn
    argbind.parse_args = lambda *args, **kwargs: {}
    return {
        "audiotools": audiotools,
        "audiotools.ml": ml,
        "audiotools.core": core,
        "argbind": argbind,
    }


@pytest.fixture(scope="module")
def ref():
    """``(dac.model.dac, dac.nn.layers, dac.nn.quantize)`` of descript-audio-codec."""
    pytest.importorskip("einops")
    if importlib.util.find_spec("dac") is None:
        pytest.skip("descript-audio-codec is not installed (dev extra)")
    stubs = _stub_modules()
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy weight_norm, torch.jit.script
            modules = tuple(
                importlib.import_module(name)
                for name in ("dac.model.dac", "dac.nn.layers", "dac.nn.quantize")
            )
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return modules


def build_causal_reference(layers, quantize, kw: dict) -> nn.Module:
    """The causal fork's generator (ZeroPad1d + unpadded convs), from the real layers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the package's legacy weight_norm
        return _build_causal_reference(layers, quantize, kw)


def _build_causal_reference(layers, quantize, kw: dict) -> nn.Module:
    Snake, Conv, ConvT = layers.Snake1d, layers.WNConv1d, layers.WNConvTranspose1d

    def pad(k: int, d: int = 1) -> nn.Module:
        return nn.ZeroPad1d(((k - 1) * d, 0))

    class ResidualUnit(nn.Module):
        def __init__(self, dim: int, d: int) -> None:
            super().__init__()
            self.block = nn.Sequential(
                Snake(dim), pad(7, d), Conv(dim, dim, 7, dilation=d), Snake(dim), Conv(dim, dim, 1)
            )

        def forward(self, x):
            y = self.block(x)
            return x[..., x.shape[-1] - y.shape[-1] :] + y

    class Block(nn.Module):
        def __init__(self, *layers_: nn.Module) -> None:
            super().__init__()
            self.block = nn.Sequential(*layers_)

        def forward(self, x):
            return self.block(x)

    dim = kw["encoder_dim"]
    enc = [pad(7), Conv(1, dim, 7)]
    for s in kw["encoder_rates"]:
        dim *= 2
        half = dim // 2
        units = [ResidualUnit(half, d) for d in (1, 3, 9)]
        enc.append(Block(*units, Snake(half), pad(2 * s), Conv(half, dim, 2 * s, stride=s)))
    enc += [Snake(dim), pad(3), Conv(dim, kw["latent_dim"], 3)]
    channels = kw["decoder_dim"]
    dec = [pad(7), Conv(kw["latent_dim"], channels, 7)]
    for i, s in enumerate(kw["decoder_rates"]):
        cin, cout = channels // 2**i, channels // 2 ** (i + 1)
        units = [ResidualUnit(cout, d) for d in (1, 3, 9)]
        dec.append(Block(Snake(cin), ConvT(cin, cout, 2 * s, stride=s), *units))
    dec += [Snake(cout), pad(7), Conv(cout, 1, 7), nn.Tanh()]
    model = nn.Module()
    model.encoder = Block(*enc)
    model.quantizer = quantize.ResidualVectorQuantize(
        kw["latent_dim"], kw["n_codebooks"], kw["codebook_size"], kw["codebook_dim"]
    )
    model.decoder = nn.Module()
    model.decoder.model = nn.Sequential(*dec)
    return model


def write_checkpoint(path: Path, model: nn.Module, kwargs: dict) -> Path:
    """What ``DAC.save(path, package=False)`` writes (via audiotools when possible)."""
    if hasattr(model, "save"):
        model.save(str(path), package=False)
    else:
        torch.save({"state_dict": model.state_dict(), "metadata": {"kwargs": kwargs}}, path)
    return path


def test_non_causal_matches_descript_audio_codec(ref, tmp_path: Path) -> None:
    dac_model = ref[0]
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = randomize_(dac_model.DAC(**TINY_KWARGS), seed=1).eval()
    path = write_checkpoint(tmp_path / "weights.pth", reference, TINY_KWARGS)
    ours = load_dac_checkpoint(path)
    assert ours.config == DACConfig.from_dict({**TINY_KWARGS, "quantizer_dropout": 0.0})
    assert list(ours.state_dict()) == list(reference.state_dict())

    wave = make_audio(samples=8 * 50)
    with torch.no_grad():
        z_ref, codes_ref, latents_ref, _, _ = reference.encode(reference.preprocess(wave, 16000))
        codes = ours.encode(wave)
        assert torch.equal(codes, codes_ref)
        assert torch.allclose(ours.encoder(wave), reference.encoder(wave), atol=1e-6)
        z_from_codes = reference.quantizer.from_codes(codes_ref)[0]
        assert (ours.embed(codes) - z_from_codes).abs().max() < 1e-5
        audio_ref = reference.decode(z_from_codes)
        assert (ours.decode(codes) - audio_ref).abs().max() < 1e-5
        assert (ours(wave).audio - reference(wave)["audio"]).abs().max() < 1e-5
        # Fewer codebooks: DAC's n_quantizers.
        codes_2 = reference.encode(wave, n_quantizers=2)[1]
        assert torch.equal(ours.encode(wave, num_codebooks=2), codes_2)


def test_odd_rates_non_causal_are_padded_to_whole_frames(ref) -> None:
    """DAC's 16/24 kHz layouts (a stride of 5) decode a few samples short; we zero-pad."""
    kwargs = {**TINY_KWARGS, "encoder_rates": [2, 5], "decoder_rates": [5, 2]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = randomize_(ref[0].DAC(**kwargs), seed=2).eval()
    ours = load_state(kwargs, reference)
    codes = ours.encode(make_audio(samples=300))
    with torch.no_grad():
        audio_ref = reference.decode(reference.quantizer.from_codes(codes)[0])
        audio = ours.decode(codes)
    assert audio_ref.shape[-1] < audio.shape[-1] == 300
    assert (audio[..., : audio_ref.shape[-1]] - audio_ref).abs().max() < 1e-5
    assert torch.all(audio[..., audio_ref.shape[-1] :] == 0)


def load_state(kwargs: dict, reference: nn.Module, causal: bool = False):
    from stemstream.codec import DAC

    config = DACConfig.from_dict(
        {**kwargs, "causal_encoder": causal, "causal_decoder": causal, "quantizer_dropout": 0.0}
    )
    ours = DAC(config).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return ours


@pytest.mark.parametrize("rates", [([2, 4], [4, 2]), ([2, 5], [5, 2])])
def test_causal_matches_causal_reference(ref, tmp_path: Path, rates) -> None:
    kwargs = {**TINY_KWARGS, "encoder_rates": rates[0], "decoder_rates": rates[1]}
    torch.manual_seed(0)
    reference = randomize_(build_causal_reference(ref[1], ref[2], kwargs), seed=3).eval()
    ckpt_kwargs = {**kwargs, "causal_encoder": True, "causal_decoder": True}
    state = {"state_dict": reference.state_dict(), "metadata": {"kwargs": ckpt_kwargs}}
    torch.save(state, tmp_path / "causal.pth")
    ours = load_dac_checkpoint(tmp_path / "causal.pth")
    assert ours.config.causal_encoder and ours.config.causal_decoder
    assert list(ours.state_dict()) == list(reference.state_dict())

    hop = ours.hop_length
    wave = make_audio(samples=12 * hop)
    with torch.no_grad():
        z = reference.encoder(wave)
        assert (ours.encoder(wave) - z).abs().max() < 1e-5
        codes_ref = reference.quantizer(z)[1]
        codes = ours.encode(wave)
        assert torch.equal(codes, codes_ref)
        raw = reference.decoder.model(reference.quantizer.from_codes(codes)[0])
        # The fork's forward: audio = decoder(z)[..., hop - 1 : hop - 1 + length].
        audio_ref = raw[..., hop - 1 : hop - 1 + wave.shape[-1]]
        assert (ours.decode(codes) - audio_ref).abs().max() < 1e-5
        assert (ours(wave).audio - audio_ref).abs().max() < 1e-5


def test_causal_and_non_causal_keys_differ_but_convert(ref) -> None:
    """The causal fork's ZeroPad1d entries shift Sequential indices: same parameters, other
    names. convert_dac_layout maps one onto the other (e.g. to fine-tune official weights
    into a causal codec)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        official = randomize_(ref[0].DAC(**TINY_KWARGS), seed=4)
    causal = build_causal_reference(ref[1], ref[2], TINY_KWARGS)
    official_keys, causal_keys = list(official.state_dict()), list(causal.state_dict())
    assert len(official_keys) == len(causal_keys) and official_keys != causal_keys
    assert "encoder.block.0.weight_v" in official_keys
    assert "encoder.block.1.weight_v" in causal_keys

    source = DACConfig.from_dict({**TINY_KWARGS, "quantizer_dropout": 0.0})
    target = DACConfig.from_dict({**TINY_KWARGS, "causal_encoder": True, "causal_decoder": True})
    converted = convert_dac_layout(official.state_dict(), source, target)
    assert list(converted) == causal_keys
    causal.load_state_dict(converted, strict=True)  # the reference accepts them
    for old, new in zip(official_keys, causal_keys, strict=True):
        assert torch.equal(official.state_dict()[old], causal.state_dict()[new])


@pytest.mark.parametrize("preset", ["dac_16khz", "dac_24khz", "dac_44khz"])
def test_official_presets_have_descript_audio_codec_shapes(ref, preset: str) -> None:
    """Same parameter names and shapes as the package's DAC built with the preset's kwargs."""
    from stemstream.codec import DAC

    config = DACConfig.preset(preset)
    kwargs = {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in config.to_dict().items()
        if key not in ("causal_encoder", "causal_decoder", "ignore_left_crop")
    }
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = ref[0].DAC(**kwargs)
        ours = DAC(config)
    theirs = {key: value.shape for key, value in reference.state_dict().items()}
    assert {key: value.shape for key, value in ours.state_dict().items()} == theirs
    assert ours.hop_length == int(reference.hop_length)
