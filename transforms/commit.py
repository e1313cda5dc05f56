"""Atomic writes and commits: the one module every writer of durable state goes through (the
output's shards and `manifest.json`, the per-source checkpoints under `OUT/_work/`, the
cross-run dedup index).

On a local filesystem a file is written beside its target and renamed over it (`os.replace`
is atomic on POSIX: a reader sees the old bytes or the new ones, never half a file). Object
stores (`gs://`, `s3://` through Beam's FileSystems) have no atomic rename: the target is
deleted, then the temporary object is renamed (a copy and a delete), so the window in which
the target is missing is one object. Writers that can be retried write the same bytes for the
same input, so a retried bundle that repeats a write changes nothing.
"""

from __future__ import annotations

import os
import posixpath
import shutil

from apache_beam.io.filesystems import FileSystems


def is_remote(path: str) -> bool:
    return "://" in path


def join(base: str, *rel: str) -> str:
    return posixpath.join(base, *rel) if is_remote(base) else os.path.join(base, *rel)


def write_atomic(path: str, data: bytes, tmp_suffix: str = ".tmp") -> None:
    """`data` at `path`, all or nothing (module docstring). The temporary name is
    `path + tmp_suffix`: callers that may race on one path (two workers retrying the same
    bundle) give each writer its own suffix."""
    tmp = path + tmp_suffix
    if not is_remote(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        return
    with FileSystems.create(tmp) as fh:
        fh.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def read_bytes(path: str) -> bytes:
    if not is_remote(path):
        with open(path, "rb") as fh:
            return fh.read()
    with FileSystems.open(path, compression_type="uncompressed") as fh:
        return fh.read()


def exists(path: str) -> bool:
    return os.path.exists(path) if not is_remote(path) else FileSystems.exists(path)


def move_into_place(src: list[str], dst: list[str], existing: set[str]) -> None:
    """Rename staged files onto their final names (`existing`: final names already there)."""
    if all(not is_remote(d) for d in dst):
        for s, d in zip(src, dst):
            os.replace(s, d)  # atomic, overwrites: the same generation's file has the same bytes
        return
    # object stores: rename is copy+delete and must not clobber; the window is one object
    FileSystems.delete([d for d in dst if d in existing])
    FileSystems.rename(src, dst)


def match(pattern: str):
    """FileSystems metadata of the paths matching `pattern` ([] when there is no directory)."""
    try:
        return FileSystems.match([pattern])[0].metadata_list
    except Exception:  # noqa: BLE001 - no directory yet
        return []


def delete_quietly(path: str) -> None:
    try:
        FileSystems.delete([path])
    except Exception:  # noqa: BLE001 - already gone
        pass


def remove_tree(path: str) -> None:
    """Delete a directory and everything under it; nothing there is not an error."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        if FileSystems.exists(path):
            FileSystems.delete([path])
    except Exception:  # noqa: BLE001 - nothing there
        pass
