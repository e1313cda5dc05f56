"""Podcast feeds: safe parsing (RSS 2.0 enclosures, Atom enclosure links) and HTTP downloads.

Parsing never expands a DTD or an entity: a document that declares a DOCTYPE is refused
outright (that is where billion-laughs and external-entity attacks live), and the parse itself
goes through `defusedxml` when it is importable, the standard library's expat otherwise.

Downloads stream to a temporary file in the download folder while hashing, then are renamed
atomically to `<sha256><ext>`; a small per-URL index makes a re-run reuse the file instead of
fetching it again. Only http(s) is ever fetched (also after redirects).
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import mimetypes
import os
import posixpath
import re
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import timezone
from typing import Iterator

from mmcurate.schemas.records import stable_id

USER_AGENT = "mmcurate/0.1 (podcast ingest; python-urllib)"
log = logging.getLogger("mmcurate.ingest")
CHUNK = 1 << 20  # 1 MiB: streaming read size, constant memory whatever the file size
# A feed is one XML document held in memory to parse; the largest public podcast feeds are
# tens of MB (thousands of items with show notes), so 128 MiB leaves room without being unbounded.
MAX_FEED_BYTES = 128 * 1024**2

ITUNES = "http://www.itunes.com/dtds/podcast-1.0.dtd"
ATOM = "http://www.w3.org/2005/Atom"
MRSS = "http://search.yahoo.com/mrss/"

_MIME_EXT = {  # enclosure types mimetypes does not know or maps oddly
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "audio/x-m4a": ".m4a",
    "audio/mp4": ".m4a",
    "audio/aac": ".aac",
    "audio/ogg": ".ogg",
    "audio/opus": ".opus",
    "audio/wav": ".wav",
    "audio/x-wav": ".wav",
    "audio/wave": ".wav",
    "audio/flac": ".flac",
    "audio/x-flac": ".flac",
    "video/mp4": ".mp4",
    "video/x-m4v": ".m4v",
    "video/quicktime": ".mov",
    "video/webm": ".webm",
}


class FeedError(Exception):
    """A feed that cannot be fetched or parsed (ledger reason `feed_error`)."""


class DownloadError(Exception):
    """An enclosure that cannot be downloaded (ledger reason `download_failed`)."""


def is_http(uri: str) -> bool:
    return uri.lower().startswith(("http://", "https://"))


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class FeedItem:
    """One episode: where its media is and what the feed says about it."""

    url: str | None  # enclosure URL resolved against the feed; None: the item has no enclosure
    key: str  # guid, else link, else position: names the item in the ledger when url is None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Feed:
    title: str | None
    items: list[FeedItem]


def parse_feed(data: bytes, feed_uri: str) -> Feed:
    """Parse an RSS 2.0 or Atom document; raises FeedError on anything unsafe or unparsable."""
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    if _declares_doctype(data):
        raise FeedError(_DTD_REFUSED)
    try:
        root = _fromstring(data)
    except FeedError:
        raise
    except Exception as e:  # ParseError, defusedxml's *Forbidden, encoding errors
        raise FeedError(f"not well-formed XML ({type(e).__name__}: {e}); starts {head[:60]!r}") from e
    name = _local(root.tag)
    if name == "rss":
        channel = _child(root, "channel")
        if channel is None:
            raise FeedError("RSS document without <channel>")
        return _parse_rss(channel, feed_uri)
    if name == "feed":
        return _parse_atom(root, feed_uri)
    raise FeedError(f"root element <{name}> is neither <rss> nor <feed>")


_DTD_REFUSED = "feed declares a DOCTYPE/ENTITY; refused (no DTD or entity expansion)"
# What may precede the root element: BOM, whitespace, the XML declaration, PIs, comments.
_PROLOG_ITEM = re.compile(rb"\s+|<\?.*?\?>|<!--.*?-->", re.DOTALL)


def _declares_doctype(data: bytes) -> bool:
    """True when the prolog (before the root element) holds a DOCTYPE.

    Only the prolog: show notes often carry `<![CDATA[<!DOCTYPE html>...]]>`, which is harmless
    text. A document not in an ASCII-compatible encoding (UTF-16) cannot be checked this way and
    counts as declaring one unless defusedxml does the parse (it forbids DTDs in any encoding).
    """
    pos = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    if data[pos : pos + 2] in (b"\xff\xfe", b"\xfe\xff") or data[pos : pos + 1] == b"\x00":
        return not _have_defusedxml()
    while m := _PROLOG_ITEM.match(data, pos):
        pos = m.end()
    return data[pos : pos + 9].upper() == b"<!DOCTYPE"


def _have_defusedxml() -> bool:
    try:
        import defusedxml  # noqa: F401
    except ImportError:
        return False
    return True


def _fromstring(data: bytes):
    try:
        import defusedxml
        from defusedxml import ElementTree as SafeET
    except ImportError:  # DOCTYPE already refused above; expat does not fetch external entities
        import xml.etree.ElementTree as ET

        return ET.fromstring(data)
    try:
        return SafeET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as e:
        raise FeedError(f"{_DTD_REFUSED}: {e!r}") from e


def _local(tag) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _ns(tag) -> str:
    return tag[1:].split("}", 1)[0] if isinstance(tag, str) and tag.startswith("{") else ""


def _child(el, name: str, ns: str | None = None):
    for c in el:
        if _local(c.tag) == name and (ns is None or _ns(c.tag) == ns):
            return c
    return None


def _text(el, name: str, ns: str | None = None) -> str | None:
    c = _child(el, name, ns)
    if c is None or c.text is None:
        return None
    t = c.text.strip()
    return t or None


def _iso_date(value: str | None) -> str | None:
    """RFC 822 (RSS pubDate) or ISO 8601 (Atom) -> ISO 8601 in UTC; unparsable: as given."""
    if not value:
        return None
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        from datetime import datetime

        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat()


def _put(meta: dict[str, str], key: str, value: str | None) -> None:
    if value is not None and value != "":
        meta[key] = value


def _parse_rss(channel, feed_uri: str) -> Feed:
    series = _text(channel, "title")
    common: dict[str, str] = {"feed": feed_uri}
    _put(common, "series", series)
    _put(common, "language", _text(channel, "language"))
    _put(common, "copyright", _text(channel, "copyright"))
    _put(common, "author", _text(channel, "author", ITUNES))
    items = []
    for n, item in enumerate(c for c in channel if _local(c.tag) == "item"):
        meta = dict(common)
        _put(meta, "title", _text(item, "title"))
        guid = _text(item, "guid")
        _put(meta, "guid", guid)
        link = _text(item, "link")
        _put(meta, "link", link)
        _put(meta, "pub_date", _iso_date(_text(item, "pubDate")))
        _put(meta, "episode", _text(item, "episode", ITUNES))
        _put(meta, "season", _text(item, "season", ITUNES))
        _put(meta, "duration", _text(item, "duration", ITUNES))
        _put(meta, "author", _text(item, "author", ITUNES) or common.get("author"))
        enc = _child(item, "enclosure")
        if enc is None:  # Media RSS instead of (or nested in a group beside) a plain enclosure
            enc = _media_content(item)
        url = None
        if enc is not None and (enc.get("url") or "").strip():
            url = urllib.parse.urljoin(feed_uri, enc.get("url").strip()) if is_http(feed_uri) else enc.get("url").strip()
            _put(meta, "mime_type", (enc.get("type") or "").strip() or None)
            _put(meta, "enclosure_length", (enc.get("length") or "").strip() or None)
        items.append(FeedItem(url=url, key=guid or link or f"item{n}", metadata=meta))
    return Feed(title=series, items=items)


def _media_content(item):
    """First Media RSS <media:content> (directly or in a <media:group>) that is audio or video."""
    for el in item.iter(f"{{{MRSS}}}content"):
        kind = (el.get("medium") or el.get("type") or "").split("/")[0].lower()
        if el.get("url") and kind in ("audio", "video"):
            return el
    return None


def _parse_atom(root, feed_uri: str) -> Feed:
    series = _text(root, "title", ATOM)
    common: dict[str, str] = {"feed": feed_uri}
    _put(common, "series", series)
    lang = root.get("{http://www.w3.org/XML/1998/namespace}lang")
    _put(common, "language", lang)
    items = []
    for n, entry in enumerate(c for c in root if _local(c.tag) == "entry"):
        meta = dict(common)
        _put(meta, "title", _text(entry, "title", ATOM))
        guid = _text(entry, "id", ATOM)
        _put(meta, "guid", guid)
        _put(meta, "pub_date", _iso_date(_text(entry, "published", ATOM) or _text(entry, "updated", ATOM)))
        _put(meta, "episode", _text(entry, "episode", ITUNES))
        _put(meta, "season", _text(entry, "season", ITUNES))
        url = None
        for link in entry:
            if _local(link.tag) == "link" and link.get("rel") == "enclosure" and link.get("href"):
                href = link.get("href").strip()
                url = urllib.parse.urljoin(feed_uri, href) if is_http(feed_uri) else href
                _put(meta, "mime_type", (link.get("type") or "").strip() or None)
                _put(meta, "enclosure_length", (link.get("length") or "").strip() or None)
                break
        items.append(FeedItem(url=url, key=guid or f"entry{n}", metadata=meta))
    return Feed(title=series, items=items)


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class HttpPolicy:
    timeout_s: float  # connect, and the longest wait for the next bytes
    retries: int
    backoff_s: float
    max_bytes: int
    deadline_s: float = 3600.0  # the whole fetch, retries and backoff included
    min_rate_bps: float = 0.0  # abort a transfer slower than this on average ...
    rate_grace_s: float = 30.0  # ... once it has run this long
    progress_every_s: float = 15.0  # a log line while a transfer runs


class _Clock:
    """The deadline of one fetch (all attempts)."""

    def __init__(self, policy: HttpPolicy):
        self.t0 = time.monotonic()
        self.policy = policy

    def left(self) -> float:
        return self.policy.deadline_s - (time.monotonic() - self.t0)


class _TooSlow(Exception):
    """The deadline passed or the transfer rate stayed below the minimum."""


def _read_body(resp, url: str, policy: HttpPolicy, clock: _Clock, sink) -> int:
    """Stream the body into sink(chunk); returns the byte count. Enforces max_bytes, the
    deadline and the minimum rate between every chunk (read1: a host that drips a few bytes
    at a time never blocks a read for long), and logs progress while it runs."""
    n = 0
    t0 = last_log = time.monotonic()
    read = getattr(resp, "read1", resp.read)
    while chunk := read(CHUNK):
        n += len(chunk)
        if n > policy.max_bytes:
            raise _Oversize(f"more than {policy.max_bytes} bytes received")
        sink(chunk)
        now = time.monotonic()
        if clock.left() <= 0:
            raise _TooSlow(f"deadline of {policy.deadline_s:g} s passed after {n} bytes")
        elapsed = now - t0
        if policy.min_rate_bps and elapsed >= policy.rate_grace_s and n / elapsed < policy.min_rate_bps:
            raise _TooSlow(f"transfer rate {n / elapsed:.0f} B/s below the minimum "
                           f"{policy.min_rate_bps:g} B/s after {elapsed:.0f} s")
        if now - last_log >= policy.progress_every_s:
            last_log = now
            log.info("downloading %s: %.1f MB in %.0f s (%.0f kB/s)", url, n / 1e6, elapsed,
                     n / max(elapsed, 1e-9) / 1e3)
    return n


class _Oversize(Exception):
    pass


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not is_http(urllib.parse.urljoin(req.full_url, newurl)):
            raise urllib.error.HTTPError(newurl, code, f"redirect to non-http(s) {newurl!r} refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects())


def _retryable(e: BaseException) -> bool:
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500 or e.code in (408, 429)
    if isinstance(e, (_TooSlow, _Oversize)):
        return False  # a slow host stays slow; the deadline bounds the whole fetch anyway
    return isinstance(e, (urllib.error.URLError, OSError, socket.timeout, ConnectionError, _Truncated))


class _Truncated(Exception):
    pass


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return f"{type(e.reason).__name__}: {e.reason}"
    return f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def _open(url: str, policy: HttpPolicy, timeout_s: float | None = None) -> Iterator:
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "*/*"})
    with _OPENER.open(req, timeout=timeout_s or policy.timeout_s) as resp:
        yield resp


def _with_retries(url: str, policy: HttpPolicy, attempt_fn, error_cls):
    """Run attempt_fn(resp, clock) on a fresh response, retrying connection errors, timeouts
    and 5xx with backoff, all within policy.deadline_s; every retry is a log line."""
    if not is_http(url):
        raise error_cls(f"only http(s) URLs are fetched, not {url!r}")
    clock = _Clock(policy)
    attempts = 1 + max(0, policy.retries)
    last: BaseException | None = None
    i = 0
    for i in range(attempts):
        if i:
            wait = policy.backoff_s * (2 ** (i - 1))
            if clock.left() <= wait:
                last = _TooSlow(f"deadline of {policy.deadline_s:g} s reached before retry {i}: {_describe(last)}")
                break
            log.warning("%s: %s; retry %d of %d in %.1f s", url, _describe(last), i, attempts - 1, wait)
            time.sleep(wait)
        try:
            with _open(url, policy, max(0.1, min(policy.timeout_s, clock.left()))) as resp:
                return attempt_fn(resp, clock)
        except error_cls:
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes a ledger row
            last = e
            if not _retryable(e):
                break
    tried = f"{i + 1} attempt{'s' if i else ''}"
    raise error_cls(f"{_describe(last)} ({tried}, timeout {policy.timeout_s:g}s, deadline "
                    f"{policy.deadline_s:g}s)") from last


def _content_length(resp) -> int | None:
    value = resp.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def fetch_bytes(url: str, policy: HttpPolicy) -> bytes:
    """A whole (small) document, e.g. a feed, capped at policy.max_bytes."""

    def attempt(resp, clock) -> bytes:
        cl = _content_length(resp)
        if cl is not None and cl > policy.max_bytes:
            raise FeedError(f"Content-Length {cl} > limit {policy.max_bytes} bytes")
        parts: list[bytes] = []
        try:
            _read_body(resp, url, policy, clock, parts.append)
        except _Oversize:
            raise FeedError(f"more than {policy.max_bytes} bytes") from None
        data = b"".join(parts)
        if cl is not None and len(data) < cl:
            raise _Truncated(f"got {len(data)} of {cl} bytes")
        return data

    return _with_retries(url, policy, attempt, FeedError)


@dataclass(frozen=True)
class Download:
    path: str
    sha256: str
    bytes: int
    reused: bool


def _ext_for(url: str, content_type: str | None, hint_type: str | None) -> str:
    ext = posixpath.splitext(urllib.parse.urlsplit(url).path)[1].lower()
    if re.fullmatch(r"\.[a-z0-9]{1,5}", ext or ""):
        return ext
    for t in (content_type, hint_type):
        t = (t or "").split(";")[0].strip().lower()
        if t:
            guess = _MIME_EXT.get(t) or mimetypes.guess_extension(t)
            if guess:
                return guess
    return ".bin"


def _index_path(download_dir: str, url: str) -> str:
    return os.path.join(download_dir, ".by-url", stable_id("download", url, n=32) + ".json")


def _reuse(download_dir: str, url: str) -> Download | None:
    try:
        with open(_index_path(download_dir, url), encoding="utf-8") as fh:
            idx = json.load(fh)
        path = os.path.join(download_dir, idx["file"])
        if idx.get("url") == url and os.path.getsize(path) == idx["bytes"]:
            return Download(path, idx["sha256"], idx["bytes"], reused=True)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def remove_stale_parts(download_dir: str, idle_s: float) -> list[str]:
    """Delete partial downloads (`.part-*`) not written to for `idle_s` seconds: leftovers of a
    killed run (a live transfer writes at least every timeout). Returns what was deleted."""
    gone = []
    now = time.time()
    for d in (download_dir, os.path.join(download_dir, ".by-url")):
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            path = os.path.join(d, name)
            if name.startswith(".part-"):
                with contextlib.suppress(OSError):
                    if now - os.path.getmtime(path) >= idle_s:
                        os.unlink(path)
                        gone.append(path)
    if gone:
        log.info("removed %d partial download(s) left by an interrupted run in %s", len(gone), download_dir)
    return gone


def _write_atomic(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".part-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def download(url: str, download_dir: str, policy: HttpPolicy, type_hint: str | None = None) -> Download:
    """Fetch url into download_dir/<sha256><ext> (streamed, hashed, size-capped, atomic).

    A URL downloaded before (per the `.by-url` index, file still present at its size) is reused.
    Raises DownloadError with the HTTP status or network error in its message.
    """
    found = _reuse(download_dir, url)
    if found is not None:
        return found
    os.makedirs(download_dir, exist_ok=True)

    def attempt(resp, clock) -> Download:
        cl = _content_length(resp)
        if cl is not None and cl > policy.max_bytes:
            raise DownloadError(f"Content-Length {cl} > max_download_bytes {policy.max_bytes}")
        ext = _ext_for(resp.geturl() or url, resp.headers.get("Content-Type"), type_hint)
        fd, tmp = tempfile.mkstemp(dir=download_dir, prefix=".part-", suffix=ext)
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                def sink(chunk: bytes) -> None:
                    h.update(chunk)
                    out.write(chunk)

                try:
                    n = _read_body(resp, url, policy, clock, sink)
                except _Oversize:
                    raise DownloadError(f"more than max_download_bytes {policy.max_bytes} received") from None
            if cl is not None and n < cl:
                raise _Truncated(f"connection closed after {n} of {cl} bytes")
            sha = h.hexdigest()
            final = os.path.join(download_dir, sha + ext)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        name = os.path.basename(final)
        _write_atomic(
            _index_path(download_dir, url),
            json.dumps({"url": url, "file": name, "sha256": sha, "bytes": n}, sort_keys=True),
        )
        return Download(final, sha, n, reused=False)

    return _with_retries(url, policy, attempt, DownloadError)
