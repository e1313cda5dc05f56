"""Do the instruction-set variables change what the models compute on this CPU?

    .venv/bin/python bench/isa_check.py > /tmp/native.txt
    CT2_FORCE_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        .venv/bin/python bench/isa_check.py > /tmp/avx2.txt
    diff /tmp/native.txt /tmp/avx2.txt && echo identical

Prints a hash of each output: whisper-base (CTranslate2) transcripts of two real recordings with
their probabilities and word times, and a torch Conv1d + LSTM forward pass (ATen, oneDNN). On a
CPU with nothing above AVX2 the two runs print the same lines: the libraries pick their AVX2
kernels either way (the Makefile skips its second, AVX2 pass there). Decodes that fall back to
sampled temperatures are left out: those differ between two native runs too.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from mmcurate.transforms.asr import AsrConfig, load_transcriber

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"


def cpu_flags() -> set[str]:
    """The first CPU's /proc/cpuinfo "flags" (x86 Linux); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":
                    return set(value.split())
    except OSError:
        pass
    return set()


def _h(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()[:16]


def main() -> None:
    t = load_transcriber(AsrConfig())
    for name in ("speech/jfk.wav", "speech/LDC93S1.wav"):
        audio, _ = sf.read(str(MEDIA / name), dtype="float32")
        res = t.transcribe(audio, [(0.0, len(audio) / 16000)], None)
        print(f"whisper {name}: {_h(repr(res).encode())} {res.segments[0].text[:40]!r}")
    torch.manual_seed(0)
    x = torch.randn(4, 64, 16000)
    conv, lstm = torch.nn.Conv1d(64, 64, 251), torch.nn.LSTM(64, 128, batch_first=True)
    with torch.no_grad():
        y = conv(x)
        z, _ = lstm(y.transpose(1, 2)[:, :500])
    print(f"torch conv+lstm: {_h(y.numpy().tobytes() + z.numpy().tobytes())}")
    print(f"ATen capability: {torch.backends.cpu.get_cpu_capability()}")
    print(f"above AVX2 on this CPU: {sorted(cpu_flags() & {'avx512f', 'avx_vnni', 'amx_tile'}) or 'none'}")


if __name__ == "__main__":
    main()
