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

import contextlib
import os
import posixpath
import shutil
import tempfile
from typing import BinaryIO, Iterator

# Beam's FileSystems is imported where a remote path needs it, not here: this module is also
# the path helper of modules that must stay light to import (the audit's quality.db, the Airflow
# DAG's orchestration.partitions), and `import apache_beam` costs over a second.


def is_remote(path: str) -> bool:
    return "://" in path


def join(base: str, *rel: str) -> str:
    """`base` joined with `rel`, for a local path or an object-store URL (`gs://b/out`): the one
    path join of output, work and index directories, so that a local run and a remote one name
    the same files. URLs are joined with `/` whatever the OS; local paths with `os.path.join`."""
    return posixpath.join(base, *rel) if is_remote(base) else os.path.join(base, *rel)


@contextlib.contextmanager
def atomic_file(path: str, tmp_suffix: str = ".tmp", *, tmp_prefix: str | None = None) -> Iterator[BinaryIO]:
    """A local binary file to write, whose bytes appear at `path` all at once when the block
    ends (flushed, fsynced, renamed over it: module docstring); for writers that stream (a tar,
    a Parquet writer) as well as for `write_atomic`. The temporary file is `path + tmp_suffix`
    (left behind if the write fails: the next write of the same path replaces it); with
    `tmp_prefix` it is instead a fresh `tempfile.mkstemp` name with that prefix beside `path`
    (mode 0600), deleted if the write fails: for writers that may race on one path and whose
    directory is swept for leftovers by that prefix (the downloader's `.part-*`)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if tmp_prefix is None:
        tmp = path + tmp_suffix
        fh = open(tmp, "wb")
    else:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=tmp_prefix)
        fh = os.fdopen(fd, "wb")
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp_prefix is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise


def write_atomic(path: str, data: bytes, tmp_suffix: str = ".tmp", *, tmp_prefix: str | None = None) -> None:
    """`data` at `path`, all or nothing (module docstring): the one atomic writer of the
    product (shards' manifest, checkpoints, the dedup index, exports, the HTML report, the
    downloader's index). The temporary name is `path + tmp_suffix`: callers that may race on
    one path (two workers retrying the same bundle) give each writer its own suffix, or, on a
    local path, a `tmp_prefix` (`atomic_file`)."""
    if not is_remote(path):
        with atomic_file(path, tmp_suffix, tmp_prefix=tmp_prefix) as fh:
            fh.write(data)
        return
    from apache_beam.io.filesystems import FileSystems

    tmp = path + tmp_suffix
    with FileSystems.create(tmp) as fh:
        fh.write(data)
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([tmp], [path])


def read_bytes(path: str) -> bytes:
    if not is_remote(path):
        with open(path, "rb") as fh:
            return fh.read()
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as fh:
        return fh.read()


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(path)


def move_into_place(src: list[str], dst: list[str], existing: set[str]) -> None:
    """Rename staged files onto their final names (`existing`: final names already there)."""
    if all(not is_remote(d) for d in dst):
        for s, d in zip(src, dst):
            os.replace(s, d)  # atomic, overwrites: the same generation's file has the same bytes
        return
    # object stores: rename is copy+delete and must not clobber; the window is one object
    from apache_beam.io.filesystems import FileSystems

    FileSystems.delete([d for d in dst if d in existing])
    FileSystems.rename(src, dst)


def match(pattern: str):
    """FileSystems metadata of the paths matching `pattern` ([] when there is no directory)."""
    from apache_beam.io.filesystems import FileSystems

    try:
        return FileSystems.match([pattern])[0].metadata_list
    except Exception:  # noqa: BLE001 - no directory yet
        return []


def delete_quietly(path: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    try:
        FileSystems.delete([path])
    except Exception:  # noqa: BLE001 - already gone
        pass


def remove_tree(path: str) -> None:
    """Delete a directory and everything under it; nothing there is not an error."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    from apache_beam.io.filesystems import FileSystems

    try:
        if FileSystems.exists(path):
            FileSystems.delete([path])
    except Exception:  # noqa: BLE001 - nothing there
        pass
