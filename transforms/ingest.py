"""Ingest: turn what the user named (files, folders, globs, manifests, podcast feeds) into
hashed `MediaRef`s, and everything that cannot become one into ledger rows (stage "ingest").

Steps (labels are stable):
  Inputs          the input strings (deduplicated, order kept)
  ExpandInputs    each string -> candidates (folders listed, globs matched, manifests read,
                  feeds fetched and parsed); done inside the pipeline so it scales out
  Spread          reshuffle so hashing and downloads run in parallel across workers
  HashOrDownload  stream each candidate's bytes once: sha256 + size (downloads land in
                  download_dir named by sha256)
  KeyBySha/GroupBySha/KeepOne
                  identical bytes under several names are one source: the smallest uri wins,
                  the others become `duplicate` rows naming the kept uri

Invariant: every candidate ends as exactly one MediaRef or one Rejection, so
`ingest.inputs == ingest.media + ingest.rejected`.

Ledger reasons: not_found, empty_file, too_large, unreadable, invalid_path,
unsupported_extension, bad_manifest, feed_error, no_enclosure, download_failed, duplicate.

Why one module of this length: every kind of input (file, folder, glob, manifest, feed) ends
in the same MediaRef or ledger row; a feed's HTTP is in rss.py.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics

from mmcurate.schemas.params import Rule, non_negative, positive
from mmcurate.schemas.printable import printable
from mmcurate.schemas.records import MediaRef, Rejection
from mmcurate.transforms import rss


@dataclass
class IngestConfig:
    max_bytes: int = 20 * 1024**3  # refuse inputs above 20 GiB ("huge"): reason too_large
    http_timeout_s: float = 30.0
    http_retries: int = 3
    http_backoff_s: float = 0.5
    max_download_bytes: int = 4 * 1024**3
    # one download (all retries) may take this long: 4 GiB at ~1.2 MB/s
    download_deadline_s: float = 3600.0
    # a transfer averaging less than this after download_rate_grace_s is abandoned (a host
    # dripping 10 B/s would otherwise hold a worker for days); 0 turns the check off
    min_download_rate_bps: float = 10_000.0
    download_rate_grace_s: float = 30.0
    download_dir: str | None = None  # default: <output>/_downloads
    media_extensions: tuple[str, ...] = (
        ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".oga", ".wma",
        ".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v",
    )

    RULES: ClassVar[dict] = {
        "max_bytes": positive("bytes"),
        "http_timeout_s": positive("seconds to connect / between bytes"),
        "http_retries": non_negative(),
        "http_backoff_s": non_negative("seconds"),
        "max_download_bytes": positive("bytes"),
        "download_deadline_s": positive("seconds"),
        "min_download_rate_bps": non_negative("bytes per second"),
        "download_rate_grace_s": non_negative("seconds"),
        "media_extensions": Rule(check=lambda v: None if v and all(e.startswith(".") for e in v)
                                 else "a non-empty list of extensions like '.mp3'"),
    }


STAGE = "ingest"
log = logging.getLogger("mmcurate.ingest")


def http_policy(cfg: IngestConfig, max_bytes: int) -> "rss.HttpPolicy":
    return rss.HttpPolicy(cfg.http_timeout_s, cfg.http_retries, cfg.http_backoff_s, max_bytes,
                          deadline_s=cfg.download_deadline_s, min_rate_bps=cfg.min_download_rate_bps,
                          rate_grace_s=cfg.download_rate_grace_s)
NS = "mmcurate"
MANIFEST_EXTS = (".jsonl", ".csv", ".parquet")
FEED_EXTS = (".rss", ".xml")
_GLOB = re.compile(r"[*?\[]")
_SNIFF_BYTES = 4096


@dataclass(frozen=True)
class _Candidate:
    """One thing to hash or download (internal to ingest)."""

    uri: str  # as shown to the user (escaped if the name is not UTF-8)
    location: str  # path / URL to read; may hold surrogate escapes
    via: str  # file | manifest | rss
    metadata: dict[str, str] = field(default_factory=dict)
    size_hint: int | None = None  # from a listing; None: ask when opening


def counter(name: str):
    """`Metrics.counter("mmcurate", name)`; the ingest counters are ingest.inputs/.media/.rejected."""
    return Metrics.counter(NS, name)


def count_inputs(n: int = 1) -> None:
    """Count input items after expansion (each ends as one MediaRef or one Rejection)."""
    counter("ingest.inputs").inc(n)


def escape_uri(path: str) -> str:
    """A path as valid UTF-8 text: undecodable bytes (surrogate escapes) become \\xNN."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def normalize_input(s: str) -> str:
    """Inputs are stored as absolute, normalized local paths (the same files given by a
    relative and by an absolute path get the same `uri` and rejection ids); remote URIs and
    globs over them stay as given; file:// is a local path."""
    if "://" in s and not s.startswith("file://"):
        return s
    path = s.removeprefix("file://")
    return os.path.abspath(os.path.expanduser(path))


def _is_local(uri: str) -> bool:
    return "://" not in uri


def _ext(path: str) -> str:
    return posixpath.splitext(path.rstrip("/"))[1].lower()


def _reject(reason: str, detail: str, uri: str, run_id: str, **kw) -> Rejection:
    return Rejection.make(stage=STAGE, reason=reason, detail=detail, uri=uri, run_id=run_id, **kw)


def _fs():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _open_raw(location: str):
    from apache_beam.io.filesystem import CompressionTypes

    # UNCOMPRESSED: Beam's AUTO would silently gunzip a .gz and hash the wrong bytes
    return _fs().open(location, compression_type=CompressionTypes.UNCOMPRESSED)


def _metadata_value(v: Any) -> str | None:
    """Scalar manifest cell -> str; None/NaN/empty and non-scalars (lists, maps) are skipped."""
    if v is None or isinstance(v, (list, dict, tuple, bytes, bytearray)):
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return None
        return str(int(v)) if v.is_integer() else repr(v)
    s = str(v).strip()
    return s or None


# --------------------------------------------------------------------------- expansion


class _ExpandInputFn(beam.DoFn):
    """One input string -> candidates (main) and ledger rows ("rejected")."""

    def __init__(self, cfg: IngestConfig, run_id: str, exclude: tuple[str, ...] = ()):
        self.cfg = cfg
        self.run_id = run_id
        self.exts = frozenset(e.lower() for e in cfg.media_extensions)
        self.exclude = exclude  # real paths / remote prefixes of the folders this run writes to
        self._said: set[str] = set()

    def process(self, item: bytes) -> Iterator[Any]:
        # inputs travel as bytes: a non-UTF-8 file name (surrogate-escaped str) has no UTF-8 form
        for out in self._expand(item.decode("utf-8", "surrogateescape")):
            count_inputs()
            if isinstance(out, Rejection):
                yield beam.pvalue.TaggedOutput("rejected", out)
            else:
                yield out

    # -- dispatch
    def _expand(self, s: str) -> Iterator[_Candidate | Rejection]:
        if rss.is_http(s):
            if _ext(s.split("?", 1)[0]) in self.exts:  # a direct media URL, not a feed
                yield _Candidate(uri=s, location=s, via="file")
            else:
                yield from self._feed(s)
            return
        if _GLOB.search(s) and not self._exists_file(s):
            yield from self._listing(s, f"glob {s!r}", explicit_via="file")
            return
        kind = self._kind(s)
        if kind == "missing":
            yield _reject("not_found", f"input {escape_uri(s)!r} does not exist", escape_uri(s), self.run_id)
        elif kind == "dir" and _is_local(s):
            yield from self._walk(s)
        elif kind == "dir":
            yield from self._listing(s.rstrip("/") + "/**", f"folder {escape_uri(s)!r}", explicit_via="file")
        else:
            yield from self._named_file(s, via="file", metadata={})

    def _exists_file(self, s: str) -> bool:
        if _is_local(s):
            return os.path.isfile(s)
        try:
            return any(m.path == s for m in _fs().match([s])[0].metadata_list)
        except Exception:  # noqa: BLE001 - a bad pattern simply is not an existing file
            return False

    def _kind(self, s: str) -> str:
        if _is_local(s):
            if os.path.isdir(s):
                return "dir"
            return "file" if os.path.lexists(s) else "missing"
        if self._exists_file(s):
            return "file"
        try:
            listed = _fs().match([s.rstrip("/") + "/**"], limits=[1])[0].metadata_list
        except Exception:  # noqa: BLE001
            listed = []
        return "dir" if listed else "missing"

    def _named_file(self, s: str, via: str, metadata: dict[str, str]) -> Iterator[_Candidate | Rejection]:
        """A file named explicitly: manifest, feed, or media (attempted whatever its extension)."""
        ext = _ext(s)
        if via == "file" and ext in MANIFEST_EXTS:
            yield from self._manifest(s)
        elif via == "file" and (ext in FEED_EXTS or (ext not in self.exts and self._sniff_feed(s))):
            yield from self._feed(s)
        else:
            yield _Candidate(uri=escape_uri(s), location=s, via=via, metadata=metadata)

    def _sniff_feed(self, s: str) -> bool:
        try:
            with _open_raw(s) as fh:
                head = fh.read(_SNIFF_BYTES).lower()
        except Exception:  # noqa: BLE001 - unreadable: hashing will say so
            return False
        return b"<rss" in head or b"<feed" in head

    def _walk(self, root: str) -> Iterator[_Candidate | Rejection]:
        """A local folder, recursively, in name order; a subfolder that cannot be listed is an
        `unreadable` ledger row (a glob would skip it without a word).

        Folder links are followed once: each real folder is listed under the first name that
        reaches it. A link back to a folder being listed (a loop) is an `unreadable` row, a
        second link to a folder listed already a `duplicate` row. The folders this run writes
        to (output, downloads) are not inputs: re-runs would ingest their own shards.
        """
        what = f"folder {escape_uri(root)!r}"
        if (mine := self._excluded(root)) is not None:
            yield _reject("not_found", f"{what} lies inside {escape_uri(mine)!r}, where this run writes its "
                          "output; its files are not inputs", escape_uri(root), self.run_id)
            return
        problems: list[OSError] = []
        found: list[str] = []
        seen: list[Rejection] = []
        listed = {os.path.realpath(root)}
        for d, dirs, files in os.walk(root, onerror=problems.append, followlinks=True):
            here = os.path.realpath(d)
            keep = []
            # hidden names (.DS_Store, .git/, partial downloads) are not inputs, as with a glob
            for name in sorted(x for x in dirs if not x.startswith(".")):
                sub = os.path.join(d, name)
                real = os.path.realpath(sub)
                if self._excluded(real) is not None:
                    continue
                if real in listed:
                    seen.append(self._relisted(sub, real, here, what))
                    continue
                listed.add(real)
                keep.append(name)
            dirs[:] = keep
            found.extend(os.path.join(d, f) for f in files if not f.startswith("."))
        for e in sorted(problems, key=lambda e: str(e.filename)):
            path = escape_uri(str(e.filename))
            log.warning("%s: cannot list %s: %s", printable(what), printable(path), printable(e.strerror or e))
            yield _reject("unreadable", f"cannot list {path} (inside {what}): {e.strerror or e}; "
                          "its files were not read", path, self.run_id)
        yield from seen
        if not found and not problems and not seen:
            yield _reject("not_found", f"{what} holds no files", escape_uri(root), self.run_id)
            return
        for path in sorted(found):
            if _ext(path) in self.exts:
                yield _Candidate(uri=escape_uri(path), location=path, via="file")
            else:
                yield _reject(
                    "unsupported_extension",
                    f"found in {what}; extension {_ext(path) or '(none)'!r} is not in media_extensions",
                    escape_uri(path), self.run_id,
                )

    def _relisted(self, link: str, real: str, here: str, what: str) -> Rejection:
        """The ledger row of a folder link whose real folder is listed already."""
        uri, target = escape_uri(link), escape_uri(real)
        if here == real or here.startswith(real.rstrip("/") + "/"):
            return _reject("unreadable", f"symlink loop: {uri} (inside {what}) leads back to {target}, "
                           "which is being listed; not followed again", uri, self.run_id)
        return _reject("duplicate", f"folder {uri} (inside {what}) is a link to {target}, listed already; "
                       "its files are read once, under that name", uri, self.run_id)

    def _excluded(self, path: str) -> str | None:
        """The folder this run writes to (output, downloads) that holds `path`, if any; says
        once per folder that it is skipped."""
        if not self.exclude:
            return None
        p = os.path.realpath(path) if _is_local(path) else path
        for mine in self.exclude:
            if p == mine or p.startswith(mine.rstrip("/") + "/"):
                if mine not in self._said:
                    self._said.add(mine)
                    log.info("not reading %s as input: this run writes its output there", printable(mine))
                return mine
        return None

    def _listing(self, pattern: str, what: str, explicit_via: str) -> Iterator[_Candidate | Rejection]:
        try:
            found = _fs().match([pattern])[0].metadata_list
        except Exception as e:  # noqa: BLE001
            yield _reject("unreadable", f"cannot list {what}: {e}", escape_uri(pattern), self.run_id)
            return
        files = sorted((m for m in found if not (_is_local(m.path) and os.path.isdir(m.path))
                        and self._excluded(m.path) is None), key=lambda m: m.path)
        if not files:
            yield _reject("not_found", f"{what} matched no files", escape_uri(pattern.removesuffix("/**")), self.run_id)
            return
        for m in files:
            if _ext(m.path) in self.exts:
                yield _Candidate(uri=escape_uri(m.path), location=m.path, via=explicit_via, size_hint=m.size_in_bytes)
            else:
                yield _reject(
                    "unsupported_extension",
                    f"found in {what}; extension {_ext(m.path) or '(none)'!r} is not in media_extensions",
                    escape_uri(m.path),
                    self.run_id,
                )

    # -- manifests
    def _manifest(self, path: str) -> Iterator[_Candidate | Rejection]:
        uri = escape_uri(path)
        base = _fs().split(path)[0]
        n_rows = 0
        try:
            for n, row in self._manifest_rows(path):
                n_rows += 1
                if isinstance(row, str):  # a line that could not be read
                    yield _reject("bad_manifest", f"{uri} row {n}: {row}", f"{uri}#{n}", self.run_id)
                    continue
                target = row.get("uri")
                target = target.strip() if isinstance(target, str) else None
                if not target:
                    yield _reject("bad_manifest", f"{uri} row {n}: no 'uri' value", f"{uri}#{n}", self.run_id)
                    continue
                meta = {}
                for k, v in row.items():
                    val = _metadata_value(v)
                    if k != "uri" and val is not None:
                        meta[str(k)] = val
                yield from self._manifest_entry(target, base, meta)
        except _BadManifest as e:
            yield _reject("bad_manifest", f"{uri}: {e}", uri, self.run_id)
            return
        except Exception as e:  # noqa: BLE001 - unreadable / corrupt file
            yield _reject("bad_manifest", f"{uri}: cannot read manifest ({type(e).__name__}: {e})", uri, self.run_id)
            return
        if n_rows == 0:
            yield _reject("bad_manifest", f"{uri}: manifest has no rows", uri, self.run_id)

    def _manifest_entry(self, target: str, base: str, meta: dict[str, str]) -> Iterator[_Candidate | Rejection]:
        if rss.is_http(target):
            yield _Candidate(uri=target, location=target, via="manifest", metadata=meta)
            return
        if _is_local(target) and not os.path.isabs(target):
            target = _fs().join(base, target) if base else target
        if _is_local(target) and not os.path.lexists(target) or not _is_local(target) and not self._exists_file(target):
            yield _reject("not_found", f"manifest entry {escape_uri(target)!r} does not exist", escape_uri(target), self.run_id)
            return
        yield _Candidate(uri=escape_uri(target), location=target, via="manifest", metadata=meta)

    def _manifest_rows(self, path: str) -> Iterator[tuple[int, dict | str]]:
        ext = _ext(path)
        if ext == ".parquet":
            yield from _parquet_rows(path)
            return
        with _open_raw(path) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="")
            if ext == ".csv":
                reader = csv.DictReader(text)
                if not reader.fieldnames or "uri" not in [f.strip() for f in reader.fieldnames]:
                    raise _BadManifest(f"CSV header {reader.fieldnames!r} has no 'uri' column")
                for n, row in enumerate(reader, start=2):  # line 1 is the header
                    row = {(k or "").strip(): v for k, v in row.items() if k is not None}
                    yield n, row
            else:
                for n, line in enumerate(text, start=1):
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        yield n, f"not JSON ({e})"
                        continue
                    yield n, row if isinstance(row, dict) else f"expected a JSON object, got {type(row).__name__}"

    # -- feeds
    def _feed(self, s: str) -> Iterator[_Candidate | Rejection]:
        uri = escape_uri(s)
        try:
            if rss.is_http(s):
                policy = http_policy(self.cfg, rss.MAX_FEED_BYTES)
                data = rss.fetch_bytes(s, policy)
            else:
                with _open_raw(s) as fh:
                    data = fh.read(rss.MAX_FEED_BYTES + 1)
                if len(data) > rss.MAX_FEED_BYTES:
                    raise rss.FeedError(f"feed larger than {rss.MAX_FEED_BYTES} bytes")
            feed = rss.parse_feed(data, s)
        except rss.FeedError as e:
            yield _reject("feed_error", f"feed {uri}: {e}", uri, self.run_id)
            return
        except Exception as e:  # noqa: BLE001 - unreadable local feed
            yield _reject("feed_error", f"feed {uri}: cannot read ({type(e).__name__}: {e})", uri, self.run_id)
            return
        if not feed.items:
            why = f" (not well-formed: {feed.malformed})" if feed.malformed else ""
            yield _reject("feed_error", f"feed {uri} has no items{why}", uri, self.run_id)
            return
        base = _fs().split(s)[0] if not rss.is_http(s) else ""
        for it in feed.items:
            if it.url is None:
                yield _reject(
                    "no_enclosure", f"feed item {it.key!r} of {uri} has no media enclosure", f"{uri}#{it.key}", self.run_id
                )
            elif rss.is_http(it.url):
                yield _Candidate(uri=it.url, location=it.url, via="rss", metadata=it.metadata)
            elif rss.is_http(s) or ("://" in it.url and not self._fs_scheme_ok(it.url)):
                yield _reject(
                    "download_failed", f"enclosure {it.url!r} of {uri}: only http(s) URLs are fetched", it.url, self.run_id
                )
            else:  # a local feed may point at local files (relative to the feed's folder) or gs://, s3://
                loc = it.url if not _is_local(it.url) or os.path.isabs(it.url) else _fs().join(base, it.url)
                if _is_local(loc) and not os.path.lexists(loc):
                    yield _reject(
                        "not_found", f"enclosure {escape_uri(loc)!r} of {uri} does not exist", escape_uri(loc), self.run_id
                    )
                else:
                    yield _Candidate(uri=escape_uri(loc), location=loc, via="rss", metadata=it.metadata)

    @staticmethod
    def _fs_scheme_ok(url: str) -> bool:
        return url.split("://", 1)[0].lower() in ("gs", "s3", "hdfs", "azfs")


class _BadManifest(Exception):
    pass


def _parquet_rows(path: str) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    with _open_raw(path) as fh:
        pf = pq.ParquetFile(fh)
        if "uri" not in pf.schema_arrow.names:
            raise _BadManifest(f"Parquet columns {pf.schema_arrow.names} have no 'uri' column")
        n = 0
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                n += 1
                yield n, row


# --------------------------------------------------------------------------- hashing


class _HashOrDownloadFn(beam.DoFn):
    """Candidate -> MediaRef (bytes streamed once for sha256 + size) or a ledger row."""

    def __init__(self, cfg: IngestConfig, run_id: str, download_dir: str):
        self.cfg = cfg
        self.run_id = run_id
        self.download_dir = download_dir

    def process(self, c: _Candidate) -> Iterator[Any]:
        out = self._one(c)
        if isinstance(out, Rejection):
            yield beam.pvalue.TaggedOutput("rejected", out)
        else:
            yield out

    def _one(self, c: _Candidate) -> MediaRef | Rejection:
        if c.uri != c.location:
            try:
                c.location.encode("utf-8")
            except UnicodeEncodeError:
                return _reject("invalid_path", f"file name is not valid UTF-8 (stored escaped as {c.uri!r})", c.uri, self.run_id)
        if rss.is_http(c.location):
            return self._download(c)
        size = c.size_hint
        if size is None:
            try:
                size = _size_of(c.location)
            except FileNotFoundError:
                return _reject("not_found", f"{c.uri!r} does not exist", c.uri, self.run_id)
            except Exception as e:  # noqa: BLE001
                return _reject("unreadable", f"cannot stat {c.uri!r}: {type(e).__name__}: {e}", c.uri, self.run_id)
        if size is not None and size > self.cfg.max_bytes:
            return self._too_large(c, size)
        if size == 0:
            return _reject("empty_file", f"{c.uri!r} has zero bytes", c.uri, self.run_id)
        try:
            sha, n = _hash_stream(c.location, self.cfg.max_bytes)
        except _TooLarge as e:
            return self._too_large(c, e.seen)
        except FileNotFoundError:
            return _reject("not_found", f"{c.uri!r} does not exist", c.uri, self.run_id)
        except Exception as e:  # noqa: BLE001 - permissions, I/O errors, a folder named in a manifest
            return _reject("unreadable", f"cannot read {c.uri!r}: {type(e).__name__}: {e}", c.uri, self.run_id)
        if n == 0:
            return _reject("empty_file", f"{c.uri!r} has zero bytes", c.uri, self.run_id)
        media_uri = os.path.abspath(c.location) if _is_local(c.location) else c.location
        return MediaRef(uri=c.uri, media_uri=media_uri, ingested_via=c.via, sha256=sha, bytes=n, metadata=c.metadata)

    def _too_large(self, c: _Candidate, size: int) -> Rejection:
        return _reject(
            "too_large", f"{c.uri!r} is {size} bytes, above max_bytes {self.cfg.max_bytes}", c.uri, self.run_id
        )

    def _download(self, c: _Candidate) -> MediaRef | Rejection:
        policy = http_policy(self.cfg, self.cfg.max_download_bytes)
        try:
            got = rss.download(c.location, self.download_dir, policy, type_hint=c.metadata.get("mime_type"))
        except rss.DownloadError as e:
            return _reject("download_failed", f"{c.uri}: {e}", c.uri, self.run_id)
        except Exception as e:  # noqa: BLE001 - disk full, permissions on download_dir ...
            return _reject("download_failed", f"{c.uri}: {type(e).__name__}: {e}", c.uri, self.run_id)
        counter("ingest.downloads_reused" if got.reused else "ingest.downloads").inc()
        if got.bytes == 0:
            return _reject("empty_file", f"{c.uri} downloaded zero bytes", c.uri, self.run_id)
        if got.bytes > self.cfg.max_bytes:
            return self._too_large(c, got.bytes)
        return MediaRef(
            uri=c.uri, media_uri=got.path, ingested_via=c.via, sha256=got.sha256, bytes=got.bytes, metadata=c.metadata
        )


class _TooLarge(Exception):
    def __init__(self, seen: int):
        self.seen = seen


def _size_of(location: str) -> int | None:
    if _is_local(location):
        return os.stat(location).st_size
    found = _fs().match([location])[0].metadata_list
    if not found:
        raise FileNotFoundError(location)
    return found[0].size_in_bytes


def _hash_stream(location: str, max_bytes: int) -> tuple[str, int]:
    """sha256 and byte count, reading rss.CHUNK at a time (never the whole file)."""
    h = hashlib.sha256()
    n = 0
    with _open_raw(location) as fh:
        while chunk := fh.read(rss.CHUNK):
            n += len(chunk)
            if n > max_bytes:  # grew since it was listed, or the listing had no size
                raise _TooLarge(n)
            h.update(chunk)
    return h.hexdigest(), n


# --------------------------------------------------------------------------- dedup


def _sort_key(m: MediaRef) -> tuple:
    return (m.uri, m.media_uri, m.ingested_via, sorted(m.metadata.items()))


class _KeepOneFn(beam.DoFn):
    """(sha256, refs) -> the ref with the smallest uri; the rest are `duplicate` rows."""

    def __init__(self, run_id: str):
        self.run_id = run_id

    def process(self, kv: tuple[str, Iterable[MediaRef]]) -> Iterator[Any]:
        _, refs = kv
        refs = sorted(refs, key=_sort_key)
        kept = refs[0]
        # the same name reached twice (a folder and a manifest line): keep every piece of
        # metadata the user gave for it (first one wins on conflicts)
        merged = dict(kept.metadata)
        for other in refs[1:]:
            if other.uri == kept.uri:
                merged.update({k: v for k, v in other.metadata.items() if k not in merged})
        if merged != kept.metadata:
            kept = dataclasses.replace(kept, metadata=merged)
        yield kept
        same_uri = 0
        for dup in refs[1:]:
            item_id = None
            if dup.uri == kept.uri:  # the same name reached twice (folder + explicit file ...)
                same_uri += 1
                item_id = f"repeat-{same_uri}"
            yield beam.pvalue.TaggedOutput(
                "rejected",
                _reject(
                    "duplicate",
                    f"same bytes (sha256 {kept.sha256[:16]}..., {kept.bytes} bytes) as kept {kept.uri!r}",
                    dup.uri,
                    self.run_id,
                    source_id=kept.source_id,
                    item_id=item_id,
                ),
            )


def _counted(name: str):
    def inc(x):
        counter(name).inc()
        return x

    return inc


def _number_repeats(kv: tuple[str, Iterable[Rejection]]) -> Iterator[Rejection]:
    """The same failing name given twice (a manifest naming one missing file on two lines) is
    two inputs: the repeats get item_id `repeat-<k>` (distinct ids, as duplicates of kept
    names get), so the ledger keeps one row per input."""
    _, rows = kv
    rows = sorted(rows, key=lambda r: (r.detail, r.item_id or ""))
    yield rows[0]
    for k, r in enumerate(rows[1:], start=1):
        item = f"{r.item_id}-repeat-{k}" if r.item_id else f"repeat-{k}"
        yield Rejection.make(stage=r.stage, reason=r.reason, detail=r.detail, uri=r.uri, run_id=r.run_id,
                             source_id=r.source_id, item_id=item, duration_s=r.duration_s)


class Ingest(beam.PTransform):
    """Input strings -> {"media": PCollection[MediaRef], "rejected": PCollection[Rejection]}."""

    def __init__(self, inputs: list[str], cfg: IngestConfig, run_id: str, download_dir: str,
                 exclude: Iterable[str] = ()):
        """`exclude`: folders this run writes to (its output, download_dir). When one lies inside
        an input folder or under a glob, its files are not inputs (re-runs would ingest their
        own shards)."""
        super().__init__()
        self.inputs = list(dict.fromkeys(inputs))  # the same string twice is one input
        self.cfg = cfg
        self.run_id = run_id
        self.download_dir = download_dir
        self.exclude = tuple(dict.fromkeys(
            os.path.realpath(normalize_input(x)) if _is_local(normalize_input(x)) else x.rstrip("/")
            for x in exclude if x
        ))

    def expand(self, pbegin) -> dict[str, beam.PCollection]:
        expanded = (
            pbegin
            | "Inputs" >> beam.Create([i.encode("utf-8", "surrogateescape") for i in self.inputs])
            | "ExpandInputs"
            >> beam.ParDo(_ExpandInputFn(self.cfg, self.run_id, self.exclude)).with_outputs("rejected", main="candidates")
        )
        hashed = (
            expanded.candidates
            | "Spread" >> beam.Reshuffle()
            | "HashOrDownload"
            >> beam.ParDo(_HashOrDownloadFn(self.cfg, self.run_id, self.download_dir)).with_outputs(
                "rejected", main="media"
            )
        )
        unique = (
            hashed.media
            | "KeyBySha" >> beam.Map(lambda m: (m.sha256, m))
            | "GroupBySha" >> beam.GroupByKey()
            | "KeepOne" >> beam.ParDo(_KeepOneFn(self.run_id)).with_outputs("rejected", main="media")
        )
        media = unique.media | "CountMedia" >> beam.Map(_counted("ingest.media"))
        rejected = (
            (expanded.rejected, hashed.rejected, unique.rejected)
            | "MergeRejected" >> beam.Flatten()
            | "KeyRejection" >> beam.Map(lambda r: (r.rejection_id, r))
            | "GroupRejection" >> beam.GroupByKey()
            | "NumberRepeats" >> beam.FlatMap(_number_repeats)
            | "CountRejected" >> beam.Map(_counted("ingest.rejected"))
        )
        return {"media": media, "rejected": rejected}
