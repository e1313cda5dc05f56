"""Podcast feeds end to end against a real HTTP server on 127.0.0.1 (no network beyond it)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from mmcurate.pipelines.config import IngestConfig
from mmcurate.transforms import rss

from ingest_harness import run_ingest, write_wav

CFG = IngestConfig(http_timeout_s=2, http_retries=1, http_backoff_s=0.01)
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: connection refused
    return port


class Server:
    """Serves `routes` (path -> bytes); records hits and User-Agents; a few special paths."""

    def __init__(self):
        self.routes: dict[str, tuple[bytes, str]] = {}
        self.hits: dict[str, int] = {}
        self.agents: set[str] = set()
        self.flaky_left = 1
        srv = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                srv.hits[path] = srv.hits.get(path, 0) + 1
                srv.agents.add(self.headers.get("User-Agent", ""))
                if path.startswith("/flaky") and srv.flaky_left > 0:
                    srv.flaky_left -= 1
                    self.send_error(503, "try later")
                    return
                if path == "/slow.wav":
                    time.sleep(1.0)
                if path not in srv.routes:
                    self.send_error(404, "no such episode")
                    return
                body, ctype = srv.routes[path]
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                if not path.startswith("/nolength"):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (size limit)
                    pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


FEED = """<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd">
  <channel>
    <title>Test &amp; Show</title>
    <language>en-us</language>
    <item>
      <title>Episode One</title>
      <guid isPermaLink="false">ep-1</guid>
      <pubDate>Tue, 05 Mar 2024 10:00:00 +0100</pubDate>
      <itunes:episode>1</itunes:episode>
      <itunes:season>2</itunes:season>
      <enclosure url="{base}/media/ep1.wav" type="audio/wav" length="1"/>
    </item>
    <item>
      <title>JFK</title>
      <guid>ep-2</guid>
      <enclosure url="/media/jfk" type="audio/mpeg"/>
    </item>
    <item><title>Gone</title><guid>ep-3</guid><enclosure url="{base}/media/missing.mp3" type="audio/mpeg"/></item>
    <item><title>Down</title><guid>ep-4</guid><enclosure url="http://127.0.0.1:{closed}/x.mp3"/></item>
    <item><title>Flaky</title><guid>ep-5</guid><enclosure url="{base}/flaky.wav" type="audio/wav"/></item>
    <item><title>Text only</title><guid>ep-6</guid></item>
    <item><title>Local</title><guid>ep-7</guid><enclosure url="file:///etc/passwd"/></item>
  </channel>
</rss>
"""


def test_feed_downloads_enclosures_with_metadata_and_reuses_them(server, tmp_path, media):
    ep1 = write_wav(tmp_path / "ep1.wav", 200, seconds=0.25)
    flaky = write_wav(tmp_path / "flaky.wav", 260, seconds=0.25)
    jfk = (media / "speech" / "jfk.mp3").read_bytes()  # served from memory, never copied into the repo
    closed = closed_port()
    server.routes.update({
        "/feed": (FEED.format(base=server.base, closed=closed).encode(), "application/rss+xml"),
        "/media/ep1.wav": (ep1, "audio/wav"),
        "/media/jfk": (jfk, "audio/mpeg"),
        "/flaky.wav": (flaky, "audio/wav"),
    })
    dl = tmp_path / "downloads"
    feed_url = server.base + "/feed"
    media, rejected, counters = run_ingest([feed_url], CFG, dl)

    got = {m.metadata["guid"]: m for m in media}
    assert sorted(got) == ["ep-1", "ep-2", "ep-5"]
    for m, body, ext in ((got["ep-1"], ep1, ".wav"), (got["ep-2"], jfk, ".mp3"), (got["ep-5"], flaky, ".wav")):
        digest = hashlib.sha256(body).hexdigest()
        assert m.ingested_via == "rss" and m.sha256 == digest and m.bytes == len(body)
        assert m.media_uri == str(dl / (digest + ext))  # named by content, extension from URL or type
        assert Path(m.media_uri).read_bytes() == body
    assert got["ep-2"].uri == server.base + "/media/jfk"  # relative enclosure resolved against the feed
    one = got["ep-1"]
    assert one.uri == server.base + "/media/ep1.wav"
    assert one.metadata["title"] == "Episode One" and one.metadata["series"] == "Test & Show"
    assert one.metadata["pub_date"] == "2024-03-05T09:00:00+00:00"
    assert (one.metadata["episode"], one.metadata["season"]) == ("1", "2")
    assert one.metadata["language"] == "en-us" and one.metadata["feed"] == feed_url
    assert server.hits["/flaky.wav"] == 2  # a 503 is retried

    reasons = {r.uri: r for r in rejected}
    assert {r.reason for r in rejected} == {"download_failed", "no_enclosure"}
    assert "404" in reasons[server.base + "/media/missing.mp3"].detail
    assert server.hits["/media/missing.mp3"] == 1  # a 404 is not retried
    down = reasons[f"http://127.0.0.1:{closed}/x.mp3"]
    assert down.reason == "download_failed" and "2 attempts" in down.detail  # 1 retry
    assert reasons["file:///etc/passwd"].reason == "download_failed"
    assert reasons[f"{feed_url}#ep-6"].reason == "no_enclosure"
    assert counters["ingest.inputs"] == 7 and counters["ingest.downloads"] == 3
    assert all(a.startswith("mmcurate/") for a in server.agents)
    assert not [p for p in os.listdir(dl) if p.startswith(".part-")]  # no temporary files left

    # re-run: same MediaRefs and ledger ids, and the media are not fetched again
    mtimes = {m.media_uri: os.stat(m.media_uri).st_mtime_ns for m in media}
    before = dict(server.hits)
    media2, rejected2, counters2 = run_ingest([feed_url], CFG, dl)
    assert sorted(media2, key=lambda m: m.uri) == sorted(media, key=lambda m: m.uri)
    assert sorted(r.rejection_id for r in rejected2) == sorted(r.rejection_id for r in rejected)
    for path in ("/media/ep1.wav", "/media/jfk", "/flaky.wav"):
        assert server.hits[path] == before[path]
    assert counters2["ingest.downloads_reused"] == 3 and "ingest.downloads" not in counters2
    assert {m: os.stat(m).st_mtime_ns for m in mtimes} == mtimes


def test_feed_errors_entity_attacks_and_direct_urls(server, tmp_path):
    (tmp_path / "secret.txt").write_text("TOP-SECRET")
    laughs = (
        '<?xml version="1.0"?>\n<!DOCTYPE rss [\n <!ENTITY lol "lol">\n'
        ' <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">\n'
        f' <!ENTITY xxe SYSTEM "file://{tmp_path}/secret.txt">\n]>\n'
        "<rss><channel><title>&lol2;&xxe;</title><item><title>&xxe;</title>"
        f'<enclosure url="{server.base}/a.wav"/></item></channel></rss>'
    )
    with pytest.raises(rss.FeedError, match="DOCTYPE"):
        rss.parse_feed(laughs.encode(), "x")
    server.routes["/attack"] = (laughs.encode(), "application/rss+xml")
    server.routes["/html"] = (b"<html><body>not a feed</body></html>", "text/html")
    server.routes["/broken"] = (b"<rss><channel><title>oops</channel>", "application/rss+xml")
    (tmp_path / "attack.xml").write_text(laughs)
    local_feed = tmp_path / "show.txt"  # sniffed as a feed whatever its extension
    write_wav(tmp_path / "local.wav", 330, seconds=0.25)
    local_feed.write_text(
        "<rss><channel><title>Local</title>"
        "<item><guid>l1</guid><enclosure url='local.wav'/></item>"
        "<item><guid>l2</guid><enclosure url='absent.wav'/></item></channel></rss>"
    )
    direct = write_wav(tmp_path / "direct.wav", 410, seconds=0.25)
    listed = write_wav(tmp_path / "listed.wav", 420, seconds=0.25)
    server.routes["/direct.wav"] = (direct, "audio/wav")
    server.routes["/listed"] = (listed, "audio/wav")
    (tmp_path / "m.jsonl").write_text(json.dumps({"uri": server.base + "/listed", "title": "Listed"}) + "\n")
    inputs = [
        server.base + "/attack",
        server.base + "/html",
        server.base + "/broken",
        server.base + "/no-such-feed",
        f"http://127.0.0.1:{closed_port()}/feed.xml",
        tmp_path / "attack.xml",
        local_feed,
        server.base + "/direct.wav?token=1",  # a media URL, not a feed: downloaded as a file
        tmp_path / "m.jsonl",  # a manifest may list URLs
    ]
    media, rejected, _ = run_ingest(inputs, CFG, tmp_path / "dl")
    got = {m.uri: m for m in media}
    assert sorted((m.uri, m.ingested_via) for m in media) == sorted([
        (str(tmp_path / "local.wav"), "rss"),
        (server.base + "/direct.wav?token=1", "file"),
        (server.base + "/listed", "manifest"),
    ])
    assert got[str(tmp_path / "local.wav")].metadata["series"] == "Local"
    assert got[str(tmp_path / "local.wav")].media_uri == str(tmp_path / "local.wav")  # local: not copied
    assert got[server.base + "/listed"].metadata == {"title": "Listed"}
    assert got[server.base + "/listed"].sha256 == hashlib.sha256(listed).hexdigest()
    assert Path(got[server.base + "/direct.wav?token=1"].media_uri).read_bytes() == direct
    feed_errors = {r.uri: r.detail for r in rejected if r.reason == "feed_error"}
    assert set(feed_errors) == set(str(i) for i in inputs[:6])
    assert "DOCTYPE" in feed_errors[server.base + "/attack"] and "DOCTYPE" in feed_errors[str(tmp_path / "attack.xml")]
    assert "404" in feed_errors[server.base + "/no-such-feed"]
    assert "neither <rss> nor <feed>" in feed_errors[server.base + "/html"]
    assert not any("TOP-SECRET" in r.detail for r in rejected)
    assert "/a.wav" not in server.hits  # nothing from the attack feed was fetched
    (nf,) = [r for r in rejected if r.reason == "not_found"]
    assert nf.uri == str(tmp_path / "absent.wav")


def test_atom_enclosures_parse():
    doc = b"""<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom Show</title>
      <entry><title>E1</title><id>urn:e1</id><published>2024-01-02T03:04:05Z</published>
        <link rel="alternate" href="https://example.org/e1"/>
        <link rel="enclosure" type="audio/mpeg" href="/e1.mp3" length="10"/></entry>
      <entry><title>E2</title><id>urn:e2</id></entry></feed>"""
    feed = rss.parse_feed(doc, "https://example.org/feed")
    assert feed.title == "Atom Show"
    e1, e2 = feed.items
    assert e1.url == "https://example.org/e1.mp3"
    assert e1.metadata["pub_date"] == "2024-01-02T03:04:05+00:00" and e1.metadata["guid"] == "urn:e1"
    assert e2.url is None and e2.key == "urn:e2"


def test_download_limits_and_timeouts(server, tmp_path):
    body = os.urandom(5000)
    server.routes["/big.mp3"] = (body, "audio/mpeg")
    server.routes["/nolength.mp3"] = (body, "audio/mpeg")
    server.routes["/slow.wav"] = (b"late", "audio/wav")
    small = rss.HttpPolicy(timeout_s=2, retries=0, backoff_s=0.01, max_bytes=1000)
    with pytest.raises(rss.DownloadError, match="Content-Length 5000"):
        rss.download(server.base + "/big.mp3", str(tmp_path), small)
    with pytest.raises(rss.DownloadError, match="max_download_bytes"):  # no header: counted while streaming
        rss.download(server.base + "/nolength.mp3", str(tmp_path), small)
    quick = rss.HttpPolicy(timeout_s=0.2, retries=0, backoff_s=0.01, max_bytes=1000)
    with pytest.raises(rss.DownloadError, match="timed out"):
        rss.download(server.base + "/slow.wav", str(tmp_path), quick)
    assert not [p for p in os.listdir(tmp_path) if not p.startswith(".by-url")]  # nothing partial kept
    ok = rss.download(server.base + "/nolength.mp3", str(tmp_path / "ok"), rss.HttpPolicy(2, 0, 0.01, 10_000))
    assert ok.sha256 == hashlib.sha256(body).hexdigest() and not ok.reused
    assert Path(ok.path).name == ok.sha256 + ".mp3"


CDATA_FEED = b"""<?xml version="1.0"?>
<!-- generator: test -->
<rss version="2.0" xmlns:media="http://search.yahoo.com/mrss/"><channel><title>Notes</title>
  <item><guid>n1</guid><description><![CDATA[<!DOCTYPE html><p>show notes</p>]]></description>
    <media:group><media:content url="https://example.org/n1.jpg" medium="image"/>
      <media:content url="https://example.org/n1.m4a" type="audio/mp4"/></media:group></item>
</channel></rss>"""

ATTACK = b"""<?xml version="1.0"?>
<!DOCTYPE rss [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>
<rss><channel><title>&b;</title><item><enclosure url="https://example.org/x.mp3"/></item></channel></rss>"""


@pytest.mark.parametrize("defused", [True, False], ids=["defusedxml", "stdlib-fallback"])
def test_doctype_only_refused_in_the_prolog(defused, monkeypatch):
    if not defused:
        monkeypatch.setitem(__import__("sys").modules, "defusedxml", None)  # import now fails
    feed = rss.parse_feed(CDATA_FEED, "https://example.org/feed")  # DOCTYPE inside CDATA is text
    (item,) = feed.items
    assert item.url == "https://example.org/n1.m4a" and item.metadata["mime_type"] == "audio/mp4"
    with pytest.raises(rss.FeedError, match="DOCTYPE"):
        rss.parse_feed(ATTACK, "https://example.org/feed")
    with pytest.raises(rss.FeedError, match="DOCTYPE"):
        rss.parse_feed(ATTACK.decode().replace("<?xml version=\"1.0\"?>", "").encode("utf-16"), "x")


# Feeds that podcast apps and browsers accept although they are not well-formed XML, and RSS 1.0.
NBSP_FEED = b"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:itunes="http://www.itunes.com/dtds/podcast-1.0.dtd"><channel>
  <title>Late&nbsp;Show</title><itunes:author>Hosts</itunes:author>
  <item><title>Episode&nbsp;One</title><guid>e1</guid><pubDate>Tue, 05 Mar 2024 10:00:00 +0100</pubDate>
    <itunes:episode>1</itunes:episode><enclosure url="https://example.org/e1.mp3" type="audio/mpeg" length="7"/></item>
  <item><title>Two</title><guid>e2</guid><enclosure url="/e2.mp3" type="audio/mpeg"/></item>
</channel></rss>"""

BARE_AMP_FEED = b"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0"><channel><title>Rock & Roll</title>
  <item><title>Q&A with AT&T</title><guid>a1</guid><description><![CDATA[R&D &amp; more]]></description>
    <enclosure url="https://example.org/a1.mp3?id=1&src=rss" type="audio/mpeg"/></item>
  <item><title>Fish &amp; Chips</title><guid>a2</guid><enclosure url="https://example.org/a2.mp3"/></item>
</channel></rss>"""

RSS1_FEED = b"""<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/"
  xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:enc="http://purl.oclc.org/net/rss_2.0/enc#">
 <channel rdf:about="https://example.org/"><title>RDF Show</title><link>https://example.org/</link>
  <dc:language>de</dc:language>
  <items><rdf:Seq><rdf:li rdf:resource="https://example.org/1"/></rdf:Seq></items></channel>
 <item rdf:about="https://example.org/1"><title>One</title><link>https://example.org/1</link>
  <dc:date>2024-01-02T03:04:05Z</dc:date>
  <enc:enclosure rdf:resource="https://example.org/1.mp3" enc:type="audio/mpeg" enc:length="100"/></item>
 <item rdf:about="https://example.org/2"><title>Two</title><enclosure url="/2.ogg" type="audio/ogg"/></item>
 <item rdf:about="https://example.org/3"><title>Text only</title></item>
</rdf:RDF>"""

ATOM_NBSP_FEED = b"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Atom&nbsp;Show</title>
  <entry><title>E&nbsp;1</title><id>urn:e1</id><updated>2024-01-02T03:04:05Z</updated>
    <link rel="alternate" href="https://example.org/e1"/>
    <link rel="enclosure" href="/e1.m4a"/></entry>
</feed>"""


def test_feed_with_nbsp_is_recovered_with_its_enclosures(caplog):
    with caplog.at_level("WARNING", logger="mmcurate.ingest"):
        feed = rss.parse_feed(NBSP_FEED, "https://example.org/feed")
    assert feed.title == "Late\xa0Show" and feed.malformed
    one, two = feed.items
    assert (one.url, one.key) == ("https://example.org/e1.mp3", "e1")
    assert one.metadata == {
        "feed": "https://example.org/feed", "series": "Late\xa0Show", "author": "Hosts", "title": "Episode\xa0One",
        "guid": "e1", "pub_date": "2024-03-05T09:00:00+00:00", "episode": "1", "mime_type": "audio/mpeg",
        "enclosure_length": "7",
    }
    assert two.url == "https://example.org/e2.mp3"
    (line,) = [r.getMessage() for r in caplog.records if "recovered" in r.getMessage()]
    assert "https://example.org/feed" in line and "2 item(s) kept" in line


def test_feed_with_bare_ampersands_keeps_the_text_it_meant(caplog):
    with caplog.at_level("WARNING", logger="mmcurate.ingest"):
        feed = rss.parse_feed(BARE_AMP_FEED, "https://example.org/feed")
    assert feed.title == "Rock & Roll"
    a1, a2 = feed.items
    assert a1.metadata["title"] == "Q&A with AT&T"  # not "AT&T;" (feedparser's fallback parser)
    assert a1.url == "https://example.org/a1.mp3?id=1&src=rss"
    assert a2.metadata["title"] == "Fish & Chips" and a2.url == "https://example.org/a2.mp3"
    assert "4 bare '&' escaped" in feed.malformed  # Rock &, Q&A, AT&T, &src
    assert sum("recovered" in r.getMessage() for r in caplog.records) == 1


def test_rss_1_0_feed_parses_with_enclosures():
    feed = rss.parse_feed(RSS1_FEED, "https://example.org/feed.rdf")
    assert feed.title == "RDF Show" and feed.malformed is None
    one, two, three = feed.items
    assert one.url == "https://example.org/1.mp3" and one.key == "https://example.org/1"
    assert one.metadata["pub_date"] == "2024-01-02T03:04:05+00:00" and one.metadata["language"] == "de"
    assert one.metadata["mime_type"] == "audio/mpeg" and one.metadata["enclosure_length"] == "100"
    assert one.metadata["link"] == "https://example.org/1"
    assert two.url == "https://example.org/2.ogg" and two.metadata["mime_type"] == "audio/ogg"
    assert three.url is None and three.key == "https://example.org/3"


def test_malformed_atom_feed_is_recovered():
    feed = rss.parse_feed(ATOM_NBSP_FEED, "https://example.org/feed")
    (e1,) = feed.items
    assert feed.title == "Atom\xa0Show" and feed.malformed
    assert e1.url == "https://example.org/e1.m4a" and e1.key == "urn:e1"
    assert e1.metadata["title"] == "E\xa01" and e1.metadata["pub_date"] == "2024-01-02T03:04:05+00:00"
    assert "mime_type" not in e1.metadata  # feedparser's text/html default for a link is not the media's


def test_recovered_feeds_still_refuse_doctype_and_hidden_encodings(tmp_path):
    """Recovery does not reopen the DOCTYPE door: an entity-expansion feed that is also not
    well-formed, one in UTF-16, one in UTF-7 (where `<!DOCTYPE` is `+ADwAIQ-DOCTYPE`) are
    refused before feedparser sees them; bytes that name a file are not a file to open."""
    with pytest.raises(rss.FeedError, match="DOCTYPE"):
        rss.parse_feed(ATTACK.replace(b"<channel>", b"<channel>&nbsp; & "), "x")
    body = ATTACK.decode().replace('<?xml version="1.0"?>\n', "")
    with pytest.raises(rss.FeedError, match="DOCTYPE"):
        rss.parse_feed(body.encode("utf-16-le"), "x")  # no BOM: detected by '<' 00
    hidden = body.replace("<!", "+ADwAIQ-").encode()  # what a UTF-7 decoder reads as "<!"
    with pytest.raises(rss.FeedError, match="utf-7"):
        rss.parse_feed(b'<?xml version="1.0" encoding="utf-7"?>' + hidden, "x")
    (tmp_path / "feed.xml").write_bytes(NBSP_FEED)
    with pytest.raises(rss.FeedError, match="no root element"):
        rss.parse_feed(str(tmp_path / "feed.xml").encode(), "x")


def test_recovered_feed_downloads_through_ingest(server, tmp_path):
    body = write_wav(tmp_path / "e.wav", 500, seconds=0.25)
    server.routes["/feed"] = (NBSP_FEED.replace(b"https://example.org/e1.mp3", b"/e1.wav")
                              .replace(b"/e2.mp3", b"/missing.mp3"), "application/rss+xml")
    server.routes["/e1.wav"] = (body, "audio/wav")
    media, rejected, _ = run_ingest([server.base + "/feed"], CFG, tmp_path / "dl")
    (m,) = media
    assert m.uri == server.base + "/e1.wav" and m.metadata["title"] == "Episode\xa0One"
    assert [(r.reason, r.uri) for r in rejected] == [("download_failed", server.base + "/missing.mp3")]
