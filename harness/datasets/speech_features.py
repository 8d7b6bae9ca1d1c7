"""Framewise speech features of Greff et al. (docs/tasks.md) and majority phone labels.

Per frame (25 ms Hamming window, 10 ms step, pre-emphasis 0.97):

    [log E, c_1 .. c_12]            13 static values
    + first derivatives (deltas)     13
    + second derivatives            13   -> 39 values a frame

where c_k are the mel-frequency cepstral coefficients (26 triangular mel filters over a
512-point power spectrum, log, orthonormal DCT-II, cepstral lifter 22: HTK's defaults)
and log E is the log of the frame's power-spectrum energy, which takes the place of c_0.
Derivatives use the regression formula d_t = sum_n n (x_{t+n} - x_{t-n}) / (2 sum_n n^2),
n = 1..`delta_window`, with edge frames repeated. Spectra are python_speech_features';
tests/test_speech.py checks them against an independent DFT/mel/DCT computation.

Frame t covers samples [t * step, t * step + window); the last frame is padded with zeros
so that every sample is in some frame: T = 1 + ceil((n_samples - window) / step).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import python_speech_features as psf


@dataclass(frozen=True)
class FeatureSettings:
    """Every value that changes the features; the feature cache is keyed by all of them."""

    sample_rate: int = 16000
    window_ms: float = 25.0
    step_ms: float = 10.0
    preemphasis: float = 0.97
    n_cepstra: int = 12       # c_1 .. c_12; log energy comes on top
    n_filters: int = 26
    n_fft: int = 512
    lifter: int = 22
    delta_window: int = 2
    derivatives: int = 2      # 0: static only (13), 1: + deltas (26), 2: + delta-deltas (39)

    @classmethod
    def from_config(cls, block) -> FeatureSettings:
        """Settings from a config's `features:` block (missing keys keep the defaults)."""
        if block is None:
            return cls()
        values = dict(block.items()) if hasattr(block, "items") else dict(block)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            from harness.errors import UserError
            raise UserError(f"dataset key features.{unknown[0]} is unknown; use some of {', '.join(sorted(known))}.")
        return cls(**values)

    @property
    def window(self) -> int:
        return int(round(self.window_ms * self.sample_rate / 1000))

    @property
    def step(self) -> int:
        return int(round(self.step_ms * self.sample_rate / 1000))

    @property
    def dim(self) -> int:
        return (self.n_cepstra + 1) * (self.derivatives + 1)

    def as_dict(self) -> dict:
        return asdict(self)


def n_frames(n_samples: int, settings: FeatureSettings) -> int:
    """Number of frames a signal of n_samples makes (the same count python_speech_features makes)."""
    if n_samples <= settings.window:
        return 1
    return 1 + math.ceil((n_samples - settings.window) / settings.step)


def static_features(signal: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """Log energy and c_1..c_n of each frame: float64 (T, n_cepstra + 1), log energy first."""
    cepstra = psf.mfcc(
        signal, samplerate=settings.sample_rate,
        winlen=settings.window_ms / 1000, winstep=settings.step_ms / 1000,
        numcep=settings.n_cepstra + 1, nfilt=settings.n_filters, nfft=settings.n_fft,
        lowfreq=0, highfreq=settings.sample_rate / 2, preemph=settings.preemphasis,
        ceplifter=settings.lifter, appendEnergy=True, winfunc=np.hamming,
    )  # (T, 13): column 0 is log E, which replaced c_0
    return cepstra


def derivatives(features: np.ndarray, window: int) -> np.ndarray:
    """Regression derivatives over +-window frames (edges repeated): same shape as features."""
    return psf.delta(features, window)


def features(signal: np.ndarray, settings: FeatureSettings) -> np.ndarray:
    """The full feature matrix of one utterance: float32 (T, settings.dim), not yet normalised.

    `signal` is the waveform as floats (any scale; soundfile's [-1, 1] is what the reader passes).
    """
    blocks = [static_features(np.asarray(signal, dtype=np.float64), settings)]
    for _ in range(settings.derivatives):
        blocks.append(derivatives(blocks[-1], settings.delta_window))
    return np.concatenate(blocks, axis=1).astype(np.float32)  # (T, 39)


def majority_labels(segments: list[tuple[int, int, int]], n_samples: int,
                    settings: FeatureSettings) -> np.ndarray:
    """The class of each frame: the segment that covers most of the frame's samples.

    `segments` are (start, end, class) in samples, end exclusive, as in a .PHN file. Ties
    go to the earlier segment. A frame that no segment touches (a gap in the transcription)
    takes the segment whose middle is nearest the frame's middle. Returns int64 (T,).
    """
    count = n_frames(n_samples, settings)
    frame_start = np.arange(count) * settings.step                 # (T,)
    frame_end = np.minimum(frame_start + settings.window, n_samples)  # padding covers no phone
    starts = np.array([s for s, _, _ in segments])                 # (P,)
    ends = np.array([e for _, e, _ in segments])
    classes = np.array([c for _, _, c in segments], dtype=np.int64)
    overlap = (np.minimum(frame_end[:, None], ends[None, :])
               - np.maximum(frame_start[:, None], starts[None, :]))  # (T, P)
    overlap = np.maximum(overlap, 0)
    best = overlap.argmax(axis=1)  # argmax returns the first maximum: ties go to the earlier segment
    untouched = overlap.max(axis=1) == 0
    if untouched.any():
        frame_middle = (frame_start + settings.window / 2)[untouched]
        segment_middle = (starts + ends) / 2
        best[untouched] = np.abs(frame_middle[:, None] - segment_middle[None, :]).argmin(axis=1)
    return classes[best]
