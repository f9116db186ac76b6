"""Audio: int16 waveforms stored (trimmed/padded to a fixed length, a sample mask in `batch["mask"]`), log-mel
spectrograms modelled.

    stored   x (B, L) int16, mask (B, L) bool (True on real samples)
    modelled preprocess(x, mask) -> (B, n_mels, frames) in [0, 1]: torchaudio's MelSpectrogram on x's device,
             10·log10(mel power), mapped from [db_floor, db_ceiling] to [0, 1] (clamped); padded frames are 0
    frames   = L // hop_length (the centre of frame t is sample t·hop; the trailing centred frame is dropped);
             frame t is real when its centre lies inside the recording (`frame_mask`)

The likelihood (Laplace or Gaussian on the [0, 1] features) is masked to real frames (`expand_mask` maps the
sample mask to frames), the frame is the attribution part, and `to_waveform` inverts features to audio with
InverseMelScale + GriffinLim (deterministic: no random phase initialisation) so that reconstructions and swaps
can be listened to (`write_wav`, soundfile, 16-bit PCM).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from einops.layers.torch import Rearrange
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from mmvae.config import ConfigError, ModalityConfig
from mmvae.modalities.base import DecoderInput, Modality, as_flat
from mmvae.nets import mlp, mlp_out_dim

INT16_SCALE = 32768.0
DB_EPS = 1e-10


class AudioOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sample_rate: int = Field(default=8000, ge=1000)
    n_fft: int = Field(default=256, ge=16)
    hop_length: int = Field(default=128, ge=1)
    n_mels: int = Field(default=32, ge=4)
    f_min: float = Field(default=0.0, ge=0)
    f_max: float | None = None
    db_floor: float = -60.0  # dB mapped to 0 (and below: clamped)
    db_ceiling: float = 40.0  # dB mapped to 1
    channels: list[int] = Field(default_factory=lambda: [64, 128], min_length=1)  # conv1d levels over frames
    griffin_lim_iters: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "AudioOptions":
        if self.db_ceiling <= self.db_floor:
            raise ValueError(f"db_ceiling ({self.db_ceiling}) must exceed db_floor ({self.db_floor})")
        if self.hop_length > self.n_fft:
            raise ValueError(f"hop_length ({self.hop_length}) must not exceed n_fft ({self.n_fft})")
        if self.f_max is not None and self.f_max > self.sample_rate / 2:
            raise ValueError(f"f_max ({self.f_max}) is above the Nyquist frequency {self.sample_rate / 2}")
        return self


class LogMel(nn.Module):
    """int16-scaled waveforms (B, L) -> [0, 1] log-mel features (B, n_mels, L // hop) and back to waveforms."""

    def __init__(self, opts: AudioOptions):
        super().__init__()
        import torchaudio

        self.opts = opts
        # Small constants (window, filter bank) built on the CPU even under a meta-device context (the train
        # preflight counts parameters on "meta"; torchaudio's filter bank calls .item()); .to(device) moves them.
        with torch.device("cpu"):
            self.mel = torchaudio.transforms.MelSpectrogram(
                sample_rate=opts.sample_rate, n_fft=opts.n_fft, hop_length=opts.hop_length, n_mels=opts.n_mels,
                f_min=opts.f_min, f_max=opts.f_max, power=2.0, center=True)
        # Its window and filter bank are constants of the options: keep them out of checkpoints.
        for module in self.mel.modules():
            for name, buf in list(module._buffers.items()):
                module._non_persistent_buffers_set.add(name)

    def frames(self, length: int) -> int:
        return length // self.opts.hop_length

    def mel_power(self, wave: Tensor) -> Tensor:
        """(B, L) -> mel power (B, n_mels, L // hop + 1): torchaudio's MelSpectrogram (its window and filter bank),
        with the power spectrum taken as re² + im² instead of |·|^2 (no square root; half the time on the CPU,
        same values to float rounding, `test_mel_power_matches_torchaudio`)."""
        spectrogram = self.mel.spectrogram
        stft = torch.stft(wave, self.opts.n_fft, self.opts.hop_length, window=spectrogram.window, center=True,
                          pad_mode="reflect", return_complex=True)  # (B, n_fft // 2 + 1, frames)
        power = stft.real.square() + stft.imag.square()
        return torch.matmul(power.transpose(1, 2), self.mel.mel_scale.fb).transpose(1, 2)  # (B, n_mels, frames)

    def forward(self, wave: Tensor) -> Tensor:
        """(B, L) float waveform in [-1, 1] -> (B, n_mels, L // hop) in [0, 1]."""
        o = self.opts
        power = self.mel_power(wave.float())[..., : self.frames(wave.shape[-1])]
        db = 10.0 * torch.log10(power + DB_EPS)
        return ((db - o.db_floor) / (o.db_ceiling - o.db_floor)).clamp(0.0, 1.0)

    def invert(self, features: Tensor, length: int | None = None) -> Tensor:
        """(B, n_mels, T) [0, 1] features -> (B, ~T·hop) waveform: InverseMelScale + GriffinLim."""
        import torchaudio

        o = self.opts
        features = torch.cat([features, features[..., -1:]], dim=-1)  # restore the dropped trailing centred frame
        length = length or (features.shape[-1] - 1) * o.hop_length
        db = features.float().clamp(0, 1) * (o.db_ceiling - o.db_floor) + o.db_floor
        power = torch.pow(10.0, db / 10.0)
        inv = torchaudio.transforms.InverseMelScale(n_stft=o.n_fft // 2 + 1, n_mels=o.n_mels, sample_rate=o.sample_rate,
                                                    f_min=o.f_min, f_max=o.f_max, driver="gelsd")  # rank-deficient ok
        spec = inv(power.cpu()).clamp_min(0.0).to(features.device)
        gl = torchaudio.transforms.GriffinLim(n_fft=o.n_fft, hop_length=o.hop_length, power=2.0,
                                              n_iter=o.griffin_lim_iters, rand_init=False, length=length).to(features.device)
        return gl(spec)


def frame_mask(sample_mask: Tensor, hop: int, frames: int) -> Tensor:
    """(B, L) sample mask -> (B, frames) frame mask: frame t is real when sample t·hop is."""
    lengths = sample_mask.sum(1, keepdim=True)  # masks are a real prefix
    centres = torch.arange(frames, device=sample_mask.device) * hop
    return centres.unsqueeze(0) < lengths


class Audio(Modality):
    """Conv1d encoder over frames (mels as channels), the mirrored transposed-conv decoder, sigmoid mean."""

    kind = "audio"
    Options = AudioOptions
    supported_likelihoods = ("laplace", "gaussian")
    display = "spectrogram"

    def __init__(self, name: str, config: ModalityConfig, decoder_in: int | None):
        if len(config.shape) != 1:
            raise ConfigError(f"modality '{name}' (kind audio): shape must be [samples], got {config.shape}")
        super().__init__(name, config, decoder_in)
        o: AudioOptions = self.options
        self.features = LogMel(o)
        (length,) = self.shape
        self.n_frames = self.features.frames(length)
        channels = list(o.channels)
        down = 2 ** len(channels)
        if self.n_frames < down or self.n_frames % down:
            raise ConfigError(f"modality '{name}' (kind audio): {self.n_frames} frames (shape {length} // hop "
                              f"{o.hop_length}) must be a positive multiple of 2^{len(channels)} (option 'channels')")
        bottom = (channels[-1], self.n_frames // down)
        flat = math.prod(bottom)
        enc: list[nn.Module] = []
        prev = o.n_mels
        for ch in channels:
            enc += [nn.Conv1d(prev, ch, 4, 2, 1), nn.ReLU()]
            prev = ch
        enc += [Rearrange("b c t -> b (c t)"), mlp(flat, list(config.hidden), None)]
        self.encoder = nn.Sequential(*enc)
        self.feature_dim = mlp_out_dim(flat, list(config.hidden), None)
        if decoder_in is None:
            return
        dec: list[nn.Module] = [mlp(decoder_in, list(reversed(config.hidden)), flat), nn.ReLU(),
                                Rearrange("b (c t) -> b c t", c=bottom[0], t=bottom[1])]
        rev = list(reversed(channels))
        for i, ch in enumerate(rev):
            out = rev[i + 1] if i + 1 < len(rev) else o.n_mels
            dec.append(nn.ConvTranspose1d(ch, out, 4, 2, 1))
            if i + 1 < len(rev):
                dec.append(nn.ReLU())
        self.decoder = nn.Sequential(*dec)

    # --- data ---------------------------------------------------------------------------------
    @property
    def model_shape(self) -> tuple[int, ...]:
        return (self.options.n_mels, self.n_frames)

    @property
    def num_values(self) -> int:
        return math.prod(self.model_shape)

    def frame_mask(self, mask: Tensor) -> Tensor:
        """(B, L) sample mask -> (B, frames); a (B, frames) mask is returned as is."""
        if mask.shape[-1] == self.n_frames:
            return mask
        return frame_mask(mask, self.options.hop_length, self.n_frames)

    def expand_mask(self, mask: Tensor, like: Tensor) -> Tensor:
        """The sample mask mapped to frames and broadcast over mels: (B, 1, frames) for (B, mels, frames)."""
        if like.dim() == 2 and like.shape[-1] == self.shape[0]:  # per-sample values (the stored wave)
            return mask
        frames = self.frame_mask(mask)
        return frames.unsqueeze(1) if like.dim() == 3 else frames

    def preprocess(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """int16 (B, L) -> log-mel (B, n_mels, frames) in [0, 1]; padding samples and frames are 0.
        Float input of the modelled shape is taken as already preprocessed."""
        if x.dim() == 3:
            return x.float()
        wave = x.float() / INT16_SCALE if not x.dtype.is_floating_point else x.float()
        if mask is not None:
            wave = torch.where(mask, wave, torch.zeros_like(wave))
        feats = self.features(wave)
        if mask is not None:
            feats = torch.where(self.expand_mask(mask, feats), feats, torch.zeros_like(feats))
        return feats

    # --- networks -----------------------------------------------------------------------------
    def decode(self, inp: DecoderInput | Tensor) -> Tensor:
        raw = self.decoder(as_flat(inp))
        return torch.sigmoid(raw)

    # --- parts ----------------------------------------------------------------------------------
    def to_parts(self, elements: Tensor) -> Tensor:
        """Frames are the parts: sum over mels, (B, n_mels, T) -> (B, T)."""
        return elements.sum(1)

    @property
    def parts_shape(self) -> tuple[int, ...]:
        return (self.n_frames,)

    # --- listening --------------------------------------------------------------------------------
    @torch.no_grad()
    def to_waveform(self, features: Tensor) -> Tensor:
        """(B, n_mels, T) modelled features -> (B, T·hop) float waveform in [-1, 1] (CPU)."""
        wave = self.features.invert(features.detach().cpu().float(), length=self.n_frames * self.options.hop_length)
        return wave.clamp(-1.0, 1.0)


def write_wav(path: str | Path, wave: Tensor | np.ndarray, sample_rate: int, normalise: bool = True) -> Path:
    """Write a mono float waveform as 16-bit PCM; `normalise` scales the peak to 0.9 (Griffin-Lim output is quiet)."""
    import soundfile as sf

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w = np.asarray(wave.detach().cpu() if isinstance(wave, Tensor) else wave, dtype=np.float64).reshape(-1)
    if normalise:
        peak = float(np.abs(w).max()) if w.size else 0.0
        w = w * (0.9 / peak) if peak > 0 else w
    sf.write(str(path), np.clip(w, -1.0, 1.0), sample_rate, subtype="PCM_16")
    return path
