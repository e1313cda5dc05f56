"""Generated clips without any voice, for the quality acceptance test: whatever text ASR finds in
them is invented. Each is a few seconds of 16 kHz mono WAV, made deterministically (seeded).

* noise: white, pink (1/f) and babble-like band noise with a slow envelope, several levels;
* music-like: a chord progression of harmonic tones with a beat and a melody (no voice);
* silence: digital silence and near-silence with a faint hiss.
Several of these pass the VAD (it hears speech-like energy in them), so ASR runs on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SR = 16000


def white(seed: int, amp: float, seconds: float = 8.0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * SR)) * amp


def pink(seed: int, rms: float, seconds: float = 8.0) -> np.ndarray:
    n = int(seconds * SR)
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    f[0] = f[1]
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / np.sqrt(np.mean(x**2)) * rms


def babble_band(seed: int, rms: float, seconds: float = 8.0) -> np.ndarray:
    """Noise band-limited to the voice band (300-3400 Hz) with a 4 Hz syllable-rate envelope:
    speech-like energy with no voice in it."""
    n = int(seconds * SR)
    rng = np.random.default_rng(seed)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / SR)
    spec[(f < 300) | (f > 3400)] = 0
    x = np.fft.irfft(spec, n)
    t = np.arange(n) / SR
    env = 0.55 + 0.45 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6.28))
    x = x * env
    return x / np.sqrt(np.mean(x**2)) * rms


def _note(freq: float, t: np.ndarray, harmonics: int = 6) -> np.ndarray:
    return sum((0.6 ** k) * np.sin(2 * np.pi * freq * (k + 1) * t) for k in range(harmonics))


def music(seed: int, seconds: float = 10.0, tempo_bpm: float = 110.0) -> np.ndarray:
    """Chords (I-V-vi-IV) of harmonic tones, a plucked melody and a kick/hi-hat beat."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    beat = 60.0 / tempo_bpm
    root = 220.0 * 2 ** (rng.integers(0, 5) / 12)
    chords = [(0, 4, 7), (7, 11, 14), (9, 12, 16), (5, 9, 12)]
    x = np.zeros(n)
    bar = 4 * beat
    for i in range(int(seconds / bar) + 1):
        a, b = int(i * bar * SR), min(n, int((i + 1) * bar * SR))
        if a >= n:
            break
        tt = t[a:b] - t[a]
        env = np.exp(-tt * 0.8)
        for semis in chords[i % 4]:
            x[a:b] += 0.12 * env * _note(root * 2 ** (semis / 12), t[a:b])
    scale = [0, 2, 4, 7, 9, 12]
    for j in range(int(seconds / (beat / 2))):
        a, b = int(j * beat / 2 * SR), min(n, int((j + 1) * beat / 2 * SR))
        if a >= n:
            break
        tt = t[a:b] - t[a]
        f = 2 * root * 2 ** (scale[rng.integers(0, len(scale))] / 12)
        x[a:b] += 0.15 * np.exp(-tt * 6) * _note(f, t[a:b], 4)
    for j in range(int(seconds / beat)):
        a = int(j * beat * SR)
        m = min(n - a, int(0.15 * SR))
        if m <= 0:
            break
        tt = np.arange(m) / SR
        x[a : a + m] += 0.5 * np.exp(-tt * 30) * np.sin(2 * np.pi * (60 + 60 * np.exp(-tt * 40)) * tt)
        h = min(n - a - int(beat / 2 * SR), int(0.05 * SR))
        if h > 0:
            s = a + int(beat / 2 * SR)
            x[s : s + h] += 0.08 * rng.standard_normal(h) * np.exp(-np.arange(h) / SR * 80)
    return x / np.max(np.abs(x)) * 0.8


def silence(seconds: float = 8.0) -> np.ndarray:
    return np.zeros(int(seconds * SR))


def hiss(seed: int, seconds: float = 8.0) -> np.ndarray:
    return white(seed, 0.002, seconds)


# name -> clip; every one is free of voice
CLIPS = {
    "noise_white_0.1": lambda: white(0, 0.1),
    "noise_white_0.3": lambda: white(2, 0.3),
    "noise_pink_0.05": lambda: pink(0, 0.05),
    "noise_pink_0.2": lambda: pink(1, 0.2),
    "noise_babble_0.1": lambda: babble_band(0, 0.1),
    "noise_babble_0.2": lambda: babble_band(3, 0.2),
    "music_a": lambda: music(0),
    "music_b": lambda: music(1, tempo_bpm=90.0),
    "music_c": lambda: music(4, tempo_bpm=128.0),
    "silence": silence,
    "silence_hiss": lambda: hiss(0),
}


def write_clips(folder: Path, names: list[str] | None = None) -> list[Path]:
    """Write the clips as 16-bit WAV files into `folder`; returns their paths."""
    from mmcurate.transforms.decode import write_audio

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names or list(CLIPS):
        x = np.clip(CLIPS[name](), -1.0, 1.0).astype(np.float32)
        path = folder / f"{name}.wav"
        write_audio(str(path), [x], SR)
        paths.append(path)
    return paths


def hum(seed: int, seconds: float = 8.0, f0: float = 140.0) -> np.ndarray:
    """A wordless vowel-like hum: a glottal-like pulse train (f0 with vibrato) through two
    formant resonances that glide between vowel positions, in 4 Hz syllable-like bursts. It
    has the spectral shape of voiced speech and no words at all."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    f = f0 * (1 + 0.03 * np.sin(2 * np.pi * 5.0 * t)) * 2 ** (np.cumsum(rng.standard_normal(n)) / n / 2)
    phase = np.cumsum(f) / SR
    src = (np.mod(phase, 1.0) < 0.08).astype(float) - 0.08
    vowels = [(700, 1200), (300, 2300), (500, 900), (400, 2000)]
    out = np.zeros(n)
    step = int(0.25 * SR)
    from scipy.signal import lfilter

    for i, a in enumerate(range(0, n, step)):
        b = min(n, a + step)
        f1, f2 = vowels[rng.integers(0, len(vowels))]
        y = src[a:b]
        for fc, bw in ((f1, 90.0), (f2, 120.0)):
            r = np.exp(-np.pi * bw / SR)
            th = 2 * np.pi * fc / SR
            y = lfilter([1 - r], [1, -2 * r * np.cos(th), r * r], y)
        env = np.sin(np.pi * np.arange(b - a) / (b - a)) ** 0.5
        out[a:b] = y * env * (0.3 if i % 5 == 4 else 1.0)
    return out / np.max(np.abs(out)) * 0.7


CLIPS.update({
    "hum_a": lambda: hum(2, f0=110.0),
    "hum_b": lambda: hum(3, f0=120.0),
    "hum_c": lambda: hum(4, f0=100.0),
    "hum_d": lambda: hum(5, f0=130.0),
    "music_hum": lambda: 0.5 * music(2) + 0.6 * hum(6, seconds=10.0, f0=110.0),
})
