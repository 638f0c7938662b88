import librosa
import numpy as np
import pytest
import torch

from stemstream.codec.discriminators import Discriminator
from stemstream.codec.losses import (
    ChromaLoss,
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    chroma_filterbank,
    discriminator_adv_loss,
    feature_matching_loss,
    mel_filterbank,
    si_sdr,
)


@pytest.mark.parametrize(
    "sr, n_fft, n_mels", [(16000, 32, 5), (16000, 2048, 320), (44100, 512, 40)]
)
def test_mel_filterbank_matches_librosa(sr, n_fft, n_mels):
    ours = mel_filterbank(sr, n_fft, n_mels)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, norm="slaney", htk=False)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-8)


def test_reconstruction_losses_are_zero_only_for_identity():
    torch.manual_seed(0)
    x = 0.1 * torch.randn(2, 1, 8000)
    mel, stft = MultiScaleMelLoss(16000), MultiResolutionSTFTLoss()
    assert float(mel(x, x)) == 0.0 and float(stft(x, x)) == pytest.approx(0.0, abs=1e-6)
    y = x + 0.05 * torch.randn_like(x)
    assert float(mel(y, x)) > 0.1 and float(stft(y, x)) > 0.05
    assert float(mel(y, x)) < float(mel(torch.zeros_like(x) + 1e-4, x))


def test_si_sdr_is_scale_invariant_and_drops_with_noise():
    x = torch.randn(1, 1, 4000)
    assert float(si_sdr(3 * x, x)[0]) > 60
    noisy = x + 0.1 * torch.randn_like(x)
    assert 15 < float(si_sdr(noisy, x)[0]) < 25


@torch.no_grad()
def test_discriminator_losses():
    torch.manual_seed(0)
    disc = Discriminator(periods=(2, 3), fft_sizes=(256,), channels=4)
    x = 0.1 * torch.randn(2, 1, 4000)
    real = disc(x)
    assert len(real) == 3 and all(f[-1].dim() == 4 for f in real)
    assert float(feature_matching_loss(real, disc(x))) == 0.0
    assert float(feature_matching_loss(real, disc(x.flip(-1)))) > 0
    assert float(discriminator_adv_loss(real, disc(x))) > 0


def test_instantaneous_frequency_loss_ignores_phase_offsets_not_frequency_errors():
    from stemstream.codec.losses import InstantaneousFrequencyLoss

    t = torch.arange(16000) / 16000

    def tone(freq, phase=0.0):
        return (0.3 * torch.sin(2 * torch.pi * freq * t + phase))[None, None]

    loss = InstantaneousFrequencyLoss()
    ref = tone(440.0)
    assert float(loss(ref, ref)) == 0.0
    shifted = float(loss(tone(440.0, 2.0), ref))
    detuned = float(loss(tone(445.0), ref))
    noise = float(loss(0.1 * torch.randn_like(ref), ref))
    assert shifted < 0.1 < detuned < noise


def _tone(freq: float, seconds: float = 1.0, sr: int = 16000) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return (0.3 * torch.sin(2 * torch.pi * freq * t))[None, None]


def test_chroma_filterbank_puts_each_note_in_its_pitch_class():
    sr, n_fft = 16000, 2048
    bank = chroma_filterbank(sr, n_fft)
    assert bank.shape == (12, n_fft // 2 + 1)
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    inside = (freqs >= 55) & (freqs <= 5000)
    np.testing.assert_allclose(bank[:, inside].sum(0), 1.0, rtol=1e-5)
    assert not bank[:, ~inside].any()
    for midi in (57, 64, 72, 81):  # A3, E4, C5, A5
        f = 440.0 * 2 ** ((midi - 69) / 12)
        assert bank[:, np.argmin(np.abs(freqs - f))].argmax() == midi % 12


def test_chroma_loss_is_zero_for_identity_and_large_for_a_wrong_pitch():
    loss = ChromaLoss(16000)
    a, a_sharp = _tone(440.0), _tone(466.16)
    assert float(loss(a, a)) == pytest.approx(0.0, abs=1e-5)
    assert float(loss(0.5 * a, a)) == pytest.approx(0.0, abs=1e-5)  # level does not matter
    wrong, octave = float(loss(a_sharp, a)), float(loss(_tone(880.0), a))
    assert wrong > 0.5 and octave < 0.1
