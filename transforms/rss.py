"""Podcast feeds: parsing (RSS 2.0 and 1.0 enclosures, Atom enclosure links) and HTTP downloads.

Feeds are parsed by feedparser, as podcast apps parse them: a feed with an `&nbsp;` or a bare
`&` keeps its items. feedparser only ever sees bytes fetched here (http(s) only, size-capped),
and never expands a DTD or an entity: a document that declares a DOCTYPE is refused outright
(that is where billion-laughs and external-entity attacks live).

Downloads stream to a temporary file in the download folder while hashing, then are renamed
atomically to `<sha256><ext>`; a small per-URL index makes a re-run reuse the file instead of
fetching it again. Only http(s) is ever fetched (also after redirects).
"""

from __future__ import annotations

import codecs
import contextlib
import email.utils
import hashlib
import io
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

import feedparser

from mmcurate.schemas.printable import printable
from mmcurate.schemas.records import stable_id
from mmcurate.transforms.commit import write_atomic

USER_AGENT = "mmcurate/0.1 (podcast ingest; python-urllib)"
log = logging.getLogger("mmcurate.ingest")
CHUNK = 1 << 20  # 1 MiB: streaming read size, constant memory whatever the file size
# A feed is one XML document held in memory to parse; the largest public podcast feeds are
# tens of MB (thousands of items with show notes), so 128 MiB leaves room without being unbounded.
MAX_FEED_BYTES = 128 * 1024**2

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
    malformed: str | None = None  # what feedparser recovered from; None: well-formed XML


def parse_feed(data: bytes, feed_uri: str) -> Feed:
    """Parse the bytes of a feed (RSS 2.0 / 0.9x, RSS 1.0, Atom) the way podcast apps do.

    feedparser does the parse, from the bytes given (it is never handed a URL or a path, so
    it fetches and opens nothing). A feed that is not well-formed XML but that feedparser
    recovers (an HTML entity such as `&nbsp;`, a bare `&`, an unclosed tag) keeps its items,
    with one log line saying so. A DOCTYPE in the prolog is refused before any parsing, as is
    an encoding in which it could hide. Raises FeedError on anything refused or not a feed.
    """
    view = _ascii_view(data)
    if _declares_doctype(view):
        raise FeedError(_DTD_REFUSED)
    repaired = 0
    if view is data:  # the bare-& repair works on ASCII-compatible bytes only
        data, repaired = _escape_bare_ampersands(data)
    parsed = feedparser.parse(io.BytesIO(data), sanitize_html=False, resolve_relative_uris=False)
    version = parsed.get("version") or ""
    malformed = None
    if parsed.get("bozo"):
        exc = parsed.get("bozo_exception")
        malformed = f"{type(exc).__name__}: {exc}" if exc is not None else "not well-formed"
    if repaired:
        bare = f"{repaired} bare '&' escaped"
        malformed = f"{bare}; {malformed}" if malformed else bare
    if not version:
        root = _root_name(view)
        if root is None:
            why = f"; {malformed}" if malformed else ""
            raise FeedError(f"not a feed: no root element{why}; starts {view.lstrip()[:60]!r}")
        raise FeedError(f"root element <{root}> is neither <rss> nor <feed> (nor RSS 1.0 <rdf:RDF>)")
    feed = _feed_from(parsed, version, feed_uri, malformed)
    if malformed and feed.items:
        log.warning("feed %s is malformed but was recovered (%s); %d item(s) kept",
                    printable(feed_uri), printable(malformed), len(feed.items))
    return feed


_DTD_REFUSED = "feed declares a DOCTYPE/ENTITY; refused (no DTD or entity expansion)"
# What may precede the root element: BOM, whitespace, the XML declaration, PIs, comments.
_PROLOG_ITEM = re.compile(rb"\s+|<\?.*?\?>|<!--.*?-->", re.DOTALL)
_ROOT = re.compile(rb"<([A-Za-z_][\w.:-]*)")
_XML_ENCODING = re.compile(rb"""<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._:-]+)["']""")
# The starts of documents that are not ASCII-compatible (XML 1.0 appendix F): BOMs, EBCDIC
# '<?xm', then a first '<' in UTF-32 or UTF-16 without a BOM.
_WIDE_STARTS = (
    (b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\xfe\xff", "utf-16-be"), (b"\xff\xfe", "utf-16-le"),
    (b"\x4c\x6f\xa7\x94", "cp037"),  # EBCDIC
    (b"\x00\x00\x00\x3c", "utf-32-be"), (b"\x3c\x00\x00\x00", "utf-32-le"),
    (b"\x00\x3c", "utf-16-be"), (b"\x3c\x00", "utf-16-le"),
)


def _ascii_view(data: bytes) -> bytes:
    """The document as the DOCTYPE check can read it: `data` itself when it is
    ASCII-compatible, else its UTF-8 transcoding (UTF-16/32, EBCDIC). A declared encoding in
    which ASCII markup is not ASCII bytes (UTF-7 writes `<!` as `+ADwAIQ-`) would hide a
    DOCTYPE from the check while feedparser decodes and expands it: refused."""
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    for start, codec in _WIDE_STARTS:
        if body.startswith(start):
            return body.decode(codec, "replace").lstrip("\ufeff").encode("utf-8")
    if b"\x00" in body[:4]:  # wide, but in no form the check can read
        raise FeedError(f"feed in an encoding in which a DOCTYPE cannot be checked; refused; starts {body[:8]!r}")
    m = _XML_ENCODING.match(body.lstrip())
    if m:
        name = m.group(1).decode("ascii")
        try:
            transparent = (codecs.lookup(name).name != "utf-7"
                           and "<!DOCTYPE>&;".encode(name) == b"<!DOCTYPE>&;")
        except (LookupError, UnicodeError):
            transparent = True  # unknown to Python: feedparser falls back to UTF-8 / windows-1252
        if not transparent:
            raise FeedError(f"feed declares encoding {name!r}, in which a DOCTYPE cannot be checked; refused")
    return data


def _declares_doctype(view: bytes) -> bool:
    """True when the prolog (before the root element) holds a DOCTYPE.

    Only the prolog: show notes often carry `<![CDATA[<!DOCTYPE html>...]]>`, which is harmless
    text. `view` is ASCII-compatible (`_ascii_view`).
    """
    pos = 3 if view.startswith(b"\xef\xbb\xbf") else 0
    while m := _PROLOG_ITEM.match(view, pos):
        pos = m.end()
    return view[pos : pos + 9].upper() == b"<!DOCTYPE"


def _root_name(view: bytes) -> str | None:
    pos = 3 if view.startswith(b"\xef\xbb\xbf") else 0
    while m := _PROLOG_ITEM.match(view, pos):
        pos = m.end()
    m = _ROOT.match(view, pos)
    return m.group(1).decode("utf-8", "replace") if m else None


# A bare `&` (not starting `&name;`, `&#123;` or `&#x1f;`) outside CDATA, comments and PIs.
# feedparser's fallback parser would keep such a document but turn "AT&T" into "AT&T;"; as
# `&amp;` it parses as the text the feed meant. A well-formed document has none: unchanged.
_BARE_AMP = re.compile(
    rb"(<!\[CDATA\[.*?\]\]>|<!--.*?-->|<\?.*?\?>)|&(?!#[0-9]+;|#[xX][0-9a-fA-F]+;|[A-Za-z_:][\w.:-]*;)",
    re.DOTALL,
)


def _escape_bare_ampersands(data: bytes) -> tuple[bytes, int]:
    n = 0

    def sub(m: re.Match) -> bytes:
        nonlocal n
        if m.group(1) is not None:
            return m.group(1)
        n += 1
        return b"&amp;"

    fixed = _BARE_AMP.sub(sub, data)
    return (fixed, n) if n else (data, 0)


def _text(value) -> str | None:
    """A feedparser value as stripped text; None for nothing, blanks and non-text."""
    if not isinstance(value, str):
        return None
    return value.strip() or None


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


def _feed_from(parsed, version: str, feed_uri: str, malformed: str | None) -> Feed:
    """feedparser's result -> Feed, with the keys (and their sources) of the metadata as before:
    RSS feeds carry copyright, author, link and duration, Atom feeds do not; an RSS 2.0 date is
    its pubDate, an Atom (or RSS 1.0 dc:date) one its published or else updated time."""
    atom = version.startswith("atom")
    fd = parsed.get("feed", {})
    series = _text(fd.get("title"))
    common: dict[str, str] = {"feed": feed_uri}
    _put(common, "series", series)
    _put(common, "language", _text(fd.get("language")))
    if not atom:
        _put(common, "copyright", _text(fd.get("rights")))
        _put(common, "author", _named_author(fd))
    items = []
    for n, entry in enumerate(parsed.get("entries", [])):
        meta = dict(common)
        _put(meta, "title", _text(entry.get("title")))
        guid = _text(entry.get("id"))
        _put(meta, "guid", guid)
        link = None if atom else _alternate_link(entry)
        _put(meta, "link", link)
        date = entry.get("published")
        if atom or version == "rss10":
            date = date or entry.get("updated")
        _put(meta, "pub_date", _iso_date(_text(date)))
        _put(meta, "episode", _text(entry.get("itunes_episode")))
        _put(meta, "season", _text(entry.get("itunes_season")))
        if not atom:
            _put(meta, "duration", _text(entry.get("itunes_duration")))
            _put(meta, "author", _named_author(entry) or common.get("author"))
        url = None
        enc = _enclosure(entry, atom)
        if enc is not None and (href := _text(enc.get("href"))):
            url = urllib.parse.urljoin(feed_uri, href) if is_http(feed_uri) else href
            mime = _text(enc.get("type"))
            if atom and mime == "text/html":  # feedparser's default for a link without a type
                mime = None
            _put(meta, "mime_type", mime)
            _put(meta, "enclosure_length", _text(enc.get("length")))
        key = guid or (f"entry{n}" if atom else link or f"item{n}")
        items.append(FeedItem(url=url, key=key, metadata=meta))
    return Feed(title=series, items=items, malformed=malformed)


def _named_author(ctx) -> str | None:
    """The last author given by name alone (itunes:author, dc:creator); RSS <author> and
    <managingEditor> name an email address and are not the show's author."""
    for a in reversed(ctx.get("authors") or []):
        if isinstance(a, dict) and not a.get("email") and _text(a.get("name")):
            return _text(a.get("name"))
    return None


def _alternate_link(entry) -> str | None:
    """The item's <link> (feedparser also copies a permalink guid to `link`: not that)."""
    for link in entry.get("links") or []:
        if link.get("rel") == "alternate":
            return _text(link.get("href"))
    return None


def _enclosure(entry, atom: bool) -> dict | None:
    """{href, type, length} of the media: RSS <enclosure> (the first, as podcast apps take it),
    else RSS 1.0 <enc:enclosure>, else the first audio/video Media RSS <media:content>; Atom:
    the first <link rel="enclosure"> with an href."""
    links = [lk for lk in entry.get("links") or [] if lk.get("rel") == "enclosure"]
    if atom:
        return next((lk for lk in links if lk.get("href")), None)
    if links:
        return links[0]
    enc = entry.get("enc_enclosure")
    if isinstance(enc, dict) and enc.get("rdf:resource"):
        return {"href": enc["rdf:resource"], "type": enc.get("type"), "length": enc.get("length")}
    for mc in entry.get("media_content") or []:
        kind = (mc.get("medium") or mc.get("type") or "").split("/")[0].lower()
        if mc.get("url") and kind in ("audio", "video"):
            return {"href": mc["url"], "type": mc.get("type"), "length": mc.get("fileSize")}
    return None


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
            log.info("downloading %s: %.1f MB in %.0f s (%.0f kB/s)", printable(url), n / 1e6, elapsed,
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
            log.warning("%s: %s; retry %d of %d in %.1f s", printable(url), printable(_describe(last)), i, attempts - 1, wait)
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
        log.info("removed %d partial download(s) left by an interrupted run in %s", len(gone), printable(download_dir))
    return gone


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
        # a fresh `.part-*` name: workers fetching one URL race here, and a killed one's
        # leftover is swept by remove_stale_parts
        write_atomic(
            _index_path(download_dir, url),
            json.dumps({"url": url, "file": name, "sha256": sha, "bytes": n}, sort_keys=True).encode("utf-8"),
            tmp_prefix=".part-",
        )
        return Download(final, sha, n, reused=False)

    return _with_retries(url, policy, attempt, DownloadError)
