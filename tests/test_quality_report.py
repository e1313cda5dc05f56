"""`mmcurate audit DIR --html` and `--check`: the report renders in headless Chromium (no console
message, every plot drawn), and a gate file passes on a good output and fails on a planted
violation, with malformed files refused (exit 2)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from quality_fakes import fake_run

ROOT = Path(__file__).resolve().parents[1]
MEDIA = ROOT.parent / "shared" / "media"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PLOTS = ["funnel", "languages", "dnsmos", "durations", "rejections", "speakers", "asr-avg_logprob",
         "asr-no_speech_prob", "asr-compression_ratio", "keyframes", "dedup-methods", "dedup-clusters"]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> str:
    """A small real output: real VAD on two speech files, the mp3 of one of them (a duplicate for
    dedup), a silent clip (a ledger row) and a 6 s slide video without audio (an image-only
    document); fake ASR with one stock phrase, fake DNSMOS; quality drops the phrase."""
    d = tmp_path_factory.mktemp("report")
    silent = d / "silence.wav"
    from mmcurate.transforms.decode import write_audio
    import numpy as np

    from video_fixtures import slides_video

    write_audio(str(silent), [np.zeros(3 * 16000, np.float32)], 16000)
    slides = slides_video(d / "slides.mp4", 3, 2.0)
    o = str(d / "out")
    fake_run([str(MEDIA / "diarization" / "sample.wav"), str(MEDIA / "speech" / "jfk.wav"), str(silent),
              str(MEDIA / "speech" / "jfk.mp3"), str(slides)],
             o, texts=["we measured the signal again and wrote down the numbers.",
                       "Thanks for watching!"], quality={"min_dnsmos_ovrl": 1.2},
             stages=("vad", "speech", "quality", "video", "dedup"))
    return o


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmcurate.pipelines.cli", *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


# --------------------------------------------------------------------------- HTML report


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
            "--force-device-scale-factor=1"]
    return subprocess.run(base + args, capture_output=True, text=True, timeout=120)


def _console(stderr: str) -> list[str]:
    """Chromium's console lines (every level is logged as INFO:CONSOLE with --enable-logging)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="chromium is not installed (make test installs Debian's chromium package)")


def test_report_data_and_page(out, tmp_path):
    from mmcurate.quality.report import report_data, write_report

    d = report_data(out)
    assert d["has_quality"] and d["segments_judged"] > d["segments_kept"] > 0
    assert [k for k, _ in d["funnel"]] == ["inputs", "decoded sources", "speech (VAD)", "transcribed",
                                           "kept by quality"]
    hours = [h for _, h in d["funnel"]]
    assert hours == sorted(hours, reverse=True) and hours[-1] > 0
    quality_rows = {k: n for k, n in d["rejections"] if k.startswith("quality/")}
    assert sum(quality_rows.values()) == d["segments_judged"] - d["segments_kept"]
    assert quality_rows["quality/hallucination_phrase"] >= 1 and ("vad/no_speech", 1) in d["rejections"]
    page = Path(write_report(out, str(tmp_path / "r.html"))).read_text()
    for pid in PLOTS:
        assert f'id="plot-{pid}"' in page
    # one self-contained file: one inline script, nothing fetched
    assert page.count("<script") == 1 and "<script>" in page and " src=\"http" not in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "no data" not in page
    # the drill-down rows, the text audit's sections and the media
    t = d["tables"]
    assert t["rejected"]["total"] == sum(n for _, n in d["rejections"]) == len(t["rejected"]["rows"])
    assert t["segments"]["total"] == d["segments_judged"]
    assert t["clusters"]["total"] >= 2 and {r["kind"] for r in t["clusters"]["rows"]} >= {"source"}
    for section in ("<h2>Turns", "<h2>Words per minute", "<h2>Dedup", "<h2>Curated", "<h2>Keyframes"):
        assert section in page or section == "<h2>Turns", section  # no diarization here: no turns
    dropped = [r["segment_id"] for r in t["segments"]["rows"] if not r["keep"]]
    assert dropped and all(d["clips"][sid].get("src", "").startswith("data:audio/ogg;base64,")
                           for sid in dropped)
    assert d["thumbnails"] and all(th["src"].startswith("data:image/jpeg;base64,") for th in d["thumbnails"])
    docs = tmp_path / "r.docs"
    for th in d["thumbnails"]:
        assert f'href="r.docs/{th["document_id"]}.html"' in page
        assert (docs / f'{th["document_id"]}.html').read_text().count("<img") >= 1


@needs_chromium
def test_report_renders_in_headless_chromium(out, tmp_path):
    """No console message at all, every plot has drawn bars, and in the screenshot every plot's
    area holds drawn pixels (not just the white background)."""
    from PIL import Image

    page = tmp_path / "report.html"
    r = _cli("audit", out, "--html", str(page))
    assert r.returncode == 0, r.stderr
    assert f"wrote {page}" in r.stdout
    # a copy with a script that writes each plot's box into the DOM (the report has no script)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", """<script>
      const boxes = {};
      for (const f of document.querySelectorAll('figure.plot')) {
        const svg = f.querySelector('svg'), r = svg.getBoundingClientRect();
        boxes[f.dataset.plot] = [r.left + scrollX, r.top + scrollY, r.width, r.height,
                                 svg.querySelectorAll('rect.bar').length];
      }
      const pre = document.createElement('pre'); pre.id = 'boxes';
      pre.textContent = JSON.stringify({boxes, height: document.documentElement.scrollHeight});
      document.body.appendChild(pre);
    </script></body>"""))
    dom = _chromium(["--window-size=1400,1000", "--dump-dom", probe.as_uri()], tmp_path / "p1")
    info = json.loads(re.search(r'<pre id="boxes">(.*?)</pre>', dom.stdout, re.S).group(1))
    assert sorted(info["boxes"]) == sorted(PLOTS)
    shot = tmp_path / "report.png"
    height = int(info["height"]) + 20
    r = _chromium([f"--window-size=1400,{height}", f"--screenshot={shot}", page.as_uri()], tmp_path / "p2")
    assert _console(r.stderr) == [], _console(r.stderr)
    assert _console(dom.stderr) == []
    img = Image.open(shot).convert("RGB")
    for pid, (x, y, w, h, bars) in info["boxes"].items():
        assert bars > 0, f"plot {pid} has no bars"
        assert w > 300 and h > 100, (pid, w, h)
        crop = img.crop((int(x), int(y), int(x + w), int(y + h)))
        colours = crop.getcolors(maxcolors=1 << 16) or []
        inked = sum(n for n, c in colours if sum(c) < 600)  # not white / near-white background
        assert inked > 0.01 * w * h, f"plot {pid} looks blank ({inked} drawn pixels)"
        # a bar colour of the palette is on screen (the data, not only axes and text)
        assert any(abs(c[0] - 0x2B) < 40 and abs(c[1] - 0x6C) < 40 and abs(c[2] - 0xB0) < 40
                   for n, c in colours if n > 20), f"plot {pid}: no bars drawn"


class _Page:
    """One page in headless Chromium driven over the DevTools protocol: evaluate JavaScript,
    click with real mouse events (a user gesture: what lets a page start audio), and every
    console message, exception and log entry the page produced."""

    def __init__(self, url: str, profile: Path):
        import urllib.request

        from websockets.sync.client import connect

        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", "--window-size=1400,1000",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in self.proc.stderr:
            m = re.search(r"DevTools listening on ws://([^/]+)/", line)
            if m:
                break
        else:
            raise RuntimeError("chromium printed no DevTools address")
        targets = json.load(urllib.request.urlopen(f"http://{m.group(1)}/json/list", timeout=30))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.n, self.events = 0, []
        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            self.call(method)
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.n:
                assert "error" not in msg, msg
                return msg.get("result")
            self.events.append(msg)

    def wait_for(self, event: str):
        while not any(e.get("method") == event for e in self.events):
            self.events.append(json.loads(self.ws.recv(timeout=60)))

    def js(self, expr: str):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r
        return r["result"].get("value")

    def click(self, selector: str):
        """Scroll the element into view and click its centre with the mouse."""
        x, y = self.js(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return [r.left + r.width / 2, r.top + r.height / 2]; }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def messages(self) -> list[dict]:
        return [e for e in self.events if e.get("method") in
                ("Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Log.entryAdded")]

    def close(self):
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


@needs_chromium
def test_report_is_worked_in_headless_chromium(out, tmp_path):
    """The acceptance walk: filter the ledger to one reason, sort, open a dropped segment's
    detail and start its audio with real clicks; the page logs nothing."""
    page = tmp_path / "report.html"
    r = _cli("audit", out, "--html", str(page))
    assert r.returncode == 0, r.stderr
    p = _Page(page.as_uri(), tmp_path / "cdp")
    try:
        rows = "#t-rejected table.rows > tbody > tr"
        reasons = p.js(f"[...document.querySelectorAll('{rows}')].map(t => t.dataset.f)")
        assert "vad/no_speech" in reasons and len(set(reasons)) > 1
        p.click('#t-rejected button.chip[data-f="vad/no_speech"]')
        shown = p.js(f"[...document.querySelectorAll('{rows}')].filter(t => !t.hidden).map(t => t.dataset.f)")
        assert shown == ["vad/no_speech"], shown
        assert p.js("document.querySelector('#t-rejected .count').textContent") == f"1 of {len(reasons)} rows shown"
        p.click('#t-rejected button.chip[data-all]')  # and back
        assert p.js(f"[...document.querySelectorAll('{rows}')].filter(t => !t.hidden).length") == len(reasons)
        # sort the segments by duration, longest first (a second click)
        p.click("#t-segments thead th:nth-child(4)")
        p.click("#t-segments thead th:nth-child(4)")
        secs = p.js("[...document.querySelectorAll('#t-segments table.rows > tbody > tr')].map(t => +t.cells[3].dataset.v)")
        assert secs == sorted(secs, reverse=True) and secs[0] > secs[-1]
        # a dropped segment: open its detail, press play
        sel = '#t-segments tr.row:not([data-f="kept"]) details.seg'
        sid = p.js(f"document.querySelector('{sel}').dataset.segment")
        assert not p.js(f"document.querySelector('{sel}').open")
        p.click(f"{sel} > summary")
        assert p.js(f"document.querySelector('{sel}').open")
        p.click(f"{sel} button.play")
        state = p.js(f"""new Promise(done => {{
            const a = document.getElementById({json.dumps('a-' + sid)}), t0 = Date.now();
            (function poll() {{
                if ((!a.paused && a.currentTime > 0) || a.error || Date.now() - t0 > 20000)
                    done({{paused: a.paused, t: a.currentTime, error: a.error && a.error.code,
                           ready: a.readyState, duration: a.duration}});
                else setTimeout(poll, 50);
            }})();
        }})""")
        assert state["error"] is None and not state["paused"] and state["t"] > 0, state
        assert 0 < state["duration"] <= 10.5 and state["ready"] >= 2, state
        assert p.messages() == [], p.messages()
    finally:
        p.close()


@needs_chromium
def test_console_errors_are_detected(tmp_path):
    """The console check above is not vacuous: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    r = _chromium(["--dump-dom", bad.as_uri()], tmp_path / "p")
    assert any("undefinedFunction" in line for line in _console(r.stderr))


def _rows_of(table: str, n: int, make) -> "pa.Table":
    """n rows of a declared table: `make(i)` gives some columns, the rest are null, or zero /
    false / empty where the schema needs a value."""
    import pyarrow as pa

    from mmcurate.schemas.tables import TABLES

    schema = TABLES[table]
    blank = {pa.types.is_string: "", pa.types.is_boolean: False, pa.types.is_list: [],
             pa.types.is_floating: 0.0, pa.types.is_integer: 0, pa.types.is_map: []}
    rows = []
    for i in range(n):
        row = make(i)
        for f in schema:
            if f.name not in row:
                row[f.name] = None if f.nullable else next(v for t, v in blank.items() if t(f.type))
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema)


@pytest.mark.slow  # ~20 s: 40 clips decoded and encoded again
def test_report_of_a_1000_source_output_stays_under_the_cap(out, tmp_path):
    """1,000 more sources in the fixture's output (5,000 segments with stored audio, half of them
    dropped for 10 reasons, 3,000 ledger rows with long details, 1,000 clusters): the page holds
    the capped samples, says so, and stays under PAGE_CAP_BYTES."""
    import numpy as np
    import pyarrow.parquet as pq

    from mmcurate.quality.report import report_data, write_report
    from mmcurate.quality.report_tables import PAGE_CAP_BYTES, Caps
    from mmcurate.transforms.speech import encode_opus

    big = tmp_path / "big"
    shutil.copytree(out, big)
    manifest = json.loads((big / "manifest.json").read_text())
    t = np.arange(12 * 16000) / 16000
    opus = encode_opus((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000, 32000)
    src = lambda i: f"{i:020x}"  # noqa: E731
    seg = lambda i: f"{src(i // 5)}-seg-{i % 5:05d}"  # noqa: E731
    reasons = ["hallucination_phrase", "repeated_ngrams", "outside_vad", "implausible_rate", "low_dnsmos",
               "too_short", "too_long", "speaking_rate", "language_mismatch", "low_speech_ratio"]
    tables = {
        "sources": _rows_of("sources", 1000, lambda i: {
            "source_id": src(i), "uri": f"/data/podcasts/episode-{i:04d}.mp3", "media_uri": f"/nowhere/{i}.mp3",
            "media_kind": "audio", "duration_s": 600.0}),
        "segments": _rows_of("segments", 5000, lambda i: {
            "segment_id": seg(i), "source_id": src(i // 5), "start": 12.0 * (i % 5), "end": 12.0 * (i % 5) + 12,
            "text": "a long enough sentence of words " * 6, "audio_uri": "x",
            "audio": {"bytes": opus, "path": f"{seg(i)}.opus"}}),
        "segment_quality": _rows_of("segment_quality", 5000, lambda i: {
            "segment_id": seg(i), "source_id": src(i // 5), "start": 12.0 * (i % 5),
            "end": 12.0 * (i % 5) + 12, "duration_s": 12.0, "keep": i % 2 == 0,
            "reason": None if i % 2 == 0 else reasons[(i // 2) % 10],
            "failed": [] if i % 2 == 0 else [reasons[(i // 2) % 10]], "dnsmos_ovrl": 3.0}),
        "rejected": _rows_of("rejected", 3000, lambda i: {
            "rejection_id": f"rej-{i:06d}", "stage": "quality", "reason": reasons[i % 10],
            "detail": "scores " + "x" * 400, "uri": f"/data/podcasts/episode-{i % 1000:04d}.mp3",
            "source_id": src(i % 1000), "item_id": seg(i)}),
        "dedup_clusters": _rows_of("dedup_clusters", 2000, lambda i: {
            "member_id": f"source:{src(i % 1000)}", "item_id": src(i % 1000), "kind": "source",
            "source_id": src(i % 1000), "cluster_id": f"dc-{i // 2:06d}", "representative_id": src(i // 2 * 2 % 1000),
            "is_representative": i % 2 == 0, "method": "audio_fp", "similarity": 0.97}),
    }
    for name, tbl in tables.items():
        rel = f"{name}/part-big-0.parquet"
        pq.write_table(tbl, big / rel)
        manifest["shards"].append(rel)
    (big / "manifest.json").write_text(json.dumps(manifest))

    d = report_data(str(big))
    caps = Caps()
    # an equal quota per group, as many as fit: fewer than one row per group short of the cap
    for name, total in (("segments", 5000), ("rejected", 3000)):
        t = d["tables"][name]
        assert t["total"] >= total and caps.rows - 20 < len(t["rows"]) <= caps.rows, (name, len(t["rows"]))
    # every drop reason is in the sample, and has a player
    verdicts = {r["verdict"] for r in d["tables"]["segments"]["rows"]}
    assert set(reasons) <= verdicts
    playing = [c for c in d["clips"].values() if c.get("src")]
    assert len(playing) == caps.clips and all(c["from"] == "stored" for c in playing[:30])
    path = write_report(str(big), str(tmp_path / "big.html"), d)
    size = os.path.getsize(path)
    assert size < PAGE_CAP_BYTES, size
    page = Path(path).read_text()
    assert f"a sample of {len(d['tables']['rejected']['rows'])} of " in page and "the same number from each stage/reason" in page
    # a smaller cap is met by sampling again with halved caps
    small = write_report(str(big), str(tmp_path / "small.html"), caps=Caps(clips=2), page_cap=size // 2)
    assert os.path.getsize(small) < size // 2


# --------------------------------------------------------------------------- gates


def test_example_gate_file_passes_and_planted_violations_fail(out, tmp_path):
    from mmcurate.quality import gates

    good = tmp_path / "good.yaml"
    good.write_text("""
checks:
  - name: consistent output
    metric: problems
    op: "=="
    value: []
  - name: reject rate below 75%
    metric: quality.reject_rate
    op: "<"
    value: 0.75
  - name: English above 90% of kept hours
    metric: quality.kept_language_share.en
    default: 0
    op: ">="
    value: 0.9
  - name: no empty transcripts
    sql: SELECT count(*) FROM transcripts WHERE trim(text) = ''
    op: "=="
    value: 0
  - name: some speech
    metric: hours_speech
    op: ">"
    value: 0.005
""")
    r = _cli("audit", out, "--check", str(good))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("PASS") == 5 and "5 passed, 0 failed" in r.stdout
    # planted violations: a reject rate the run exceeds, a language that is absent, an SQL
    # expectation that does not hold
    bad = tmp_path / "bad.yaml"
    bad.write_text("""
checks:
  - name: reject rate below 1%
    metric: quality.reject_rate
    op: "<"
    value: 0.01
  - name: French at least half of kept hours
    metric: quality.kept_language_share.fr
    default: 0
    op: ">="
    value: 0.5
  - name: no stock phrases dropped
    sql: SELECT count(*) FROM rejected WHERE reason = 'hallucination_phrase'
    op: "=="
    value: 0
    why: stock phrases mean ASR ran on non-speech
  - name: some speech
    metric: hours_speech
    op: ">"
    value: 0.005
""")
    r = _cli("audit", out, "--check", str(bad))
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert [ln.split()[0] for ln in lines[:4]] == ["FAIL", "FAIL", "FAIL", "PASS"]
    assert "reject rate below 1%: quality.reject_rate = " in lines[0] and "(want < 0.01)" in lines[0]
    assert "-- stock phrases mean ASR ran on non-speech" in lines[2]
    assert lines[-1].startswith("1 passed, 3 failed")
    # the same through the module, and the example gate file in the repository parses
    outcomes = gates.evaluate(out, gates.load(str(bad)))
    assert [o.passed for o in outcomes] == [False, False, False, True]
    assert len(gates.load(str(ROOT / "quality" / "gates" / "default.yaml"))) >= 8


@pytest.mark.parametrize("text,message", [
    ("checks: [", "not valid YAML"),
    ("checks: []", "non-empty list `checks`"),
    ("rules: []\nchecks: [{name: a, metric: inputs, op: '>', value: 0}]", "unknown top-level key"),
    ("checks: [{metric: inputs, op: '>', value: 0}]", "needs a `name`"),
    ("checks: [{name: a, op: '>', value: 0}]", "exactly one of `metric` or `sql`"),
    ("checks: [{name: a, metric: inputs, sql: SELECT 1, op: '>', value: 0}]", "exactly one of"),
    ("checks: [{name: a, metric: inputs, op: '=~', value: 0}]", "`op` must be one of"),
    ("checks: [{name: a, metric: inputs, op: '>'}]", "needs a `value`"),
    ("checks: [{name: a, metric: inputs, op: '>', value: 0, colour: red}]", "unknown key(s) ['colour']"),
    ("checks: [{name: a, metric: no.such.metric, op: '>', value: 0}]", "has no 'no.such.metric'"),
    ("checks: [{name: a, sql: 'SELECT nope FROM segments', op: '>', value: 0}]", "SQL failed"),
    ("checks: [{name: a, sql: 'COPY segments TO \"/tmp/x.csv\"', op: '>', value: 0}]", "one SELECT"),
    ("checks: [{name: a, sql: 'SELECT 1 UNION ALL SELECT 2', op: '>', value: 0}]", "one row with one column"),
])
def test_malformed_gate_files_exit_2_with_one_line(out, tmp_path, text, message):
    f = tmp_path / "gates.yaml"
    f.write_text(text)
    r = _cli("audit", out, "--check", str(f))
    assert r.returncode == 2, r.stdout + r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmcurate: --check ") and message in err[0], err


def test_chart_helpers():
    from mmcurate.quality import svgplot

    assert svgplot.nice_ticks(0, 2, 4, integer=True) == [0, 1, 2]  # counts: no half ticks
    assert svgplot.nice_ticks(0, 0.004) == [0, 0.001, 0.002, 0.003, 0.004]
    edges, counts = svgplot.bins([0.5, 1.0, 1.2, 9.0, -3.0, float("nan")], 0.0, 2.0, 1.0)
    assert edges == [0.0, 1.0, 2.0] and counts == [2, 3]  # outliers go to the end bins
    svg = svgplot.histogram("t <&>", edges, {"a": counts}, xlabel="x", marker=(1.0, "min 1"))
    assert svg.count('class="bar"') == 2 and "t &lt;&amp;&gt;" in svg and 'class="marker"' in svg
    empty = svgplot.bar_chart("nothing", [], [], xlabel="x")
    assert "no data" in empty and "<svg" in empty
