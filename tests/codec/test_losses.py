import librosa
import numpy as np
import pytest
import torch

from stemstream.codec.discriminators import Discriminator
from stemstream.codec.losses import (
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
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
