"""What `mmcurate --version` prints: the code version (package + git commit, as in run ids and
manifests) and the models whose bytes are pinned by sha256 in the code. Nothing here imports
Beam or loads a model, so the answer comes in well under a second."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def code_version() -> str:
    """The package version plus the git commit; MMCURATE_CODE_VERSION overrides it (worker
    images built without .git bake their commit in; it is part of the run id)."""
    from importlib.metadata import PackageNotFoundError, version

    if os.environ.get("MMCURATE_CODE_VERSION"):
        return os.environ["MMCURATE_CODE_VERSION"]
    try:
        v = version("mmcurate")
    except PackageNotFoundError:
        v = "0+unknown"
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+g{sha}" if sha else v


def pinned_models() -> list[dict[str, str]]:
    """{"role", "name", "sha256", "source"} of every model whose bytes the code pins: the
    embedded Whisper models (`transforms.models.EMBEDDED`), the sentence encoder
    (`transforms.embed.SHA256`) and the embedded rephrase LLM (`transforms.rephrase_backends`).
    Read from the registries only: no file is hashed, no model loaded."""
    from mmcurate.transforms import embed, models, rephrase_backends

    out = [{"role": "asr", "name": m.name, "sha256": m.sha256, "source": m.version}
           for m in models.EMBEDDED.values()]
    out.append({"role": "sentence-embedding", "name": embed.MODEL_NAME,
                "sha256": embed.SHA256["model.safetensors"],
                "source": f"{embed.PACKAGE} {embed.PACKAGE_VERSION}"})
    out += [{"role": "rephrase", "name": key, "sha256": m.sha256, "source": m.version}
            for key, m in rephrase_backends.EMBEDDED.items()]
    return out


def version_text() -> str:
    """The lines `mmcurate --version` prints."""
    lines = [f"mmcurate {code_version()}",
             f"python {platform.python_version()} ({platform.machine()})",
             "models pinned by sha256 (role, name, sha256 prefix, from):"]
    pins = pinned_models()
    role_w = max(len(p["role"]) for p in pins)
    name_w = max(len(p["name"]) for p in pins)
    lines += [f"  {p['role']:<{role_w}}  {p['name']:<{name_w}}  {p['sha256'][:12]}  {p['source']}"
              for p in pins]
    return "\n".join(lines)
