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
         "asr-no_speech_prob", "asr-compression_ratio"]


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> str:
    """A small real output: real VAD on two speech files and a silent clip (a ledger row), fake
    ASR with one stock phrase, fake DNSMOS; quality drops the phrase."""
    d = tmp_path_factory.mktemp("report")
    silent = d / "silence.wav"
    from mmcurate.transforms.decode import write_audio
    import numpy as np

    write_audio(str(silent), [np.zeros(3 * 16000, np.float32)], 16000)
    o = str(d / "out")
    fake_run([str(MEDIA / "diarization" / "sample.wav"), str(MEDIA / "speech" / "jfk.wav"), str(silent)],
             o, texts=["we measured the signal again and wrote down the numbers.",
                       "Thanks for watching!"], quality={"min_dnsmos_ovrl": 1.2})
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
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "no data" not in page


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


@needs_chromium
def test_console_errors_are_detected(tmp_path):
    """The console check above is not vacuous: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    r = _chromium(["--dump-dom", bad.as_uri()], tmp_path / "p")
    assert any("undefinedFunction" in line for line in _console(r.stderr))


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
