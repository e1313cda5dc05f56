"""`mmcurate export --format qa`: temporal and turn-taking question-answer items
(mmcurate.transforms.qa), read back from the Parquet shards and checked against a reference the
exporter never sees.

No model runs. The outputs are small consistent output directories written with the project's
own records: generated three-person conversations (tests/conversations.py, the EVENTS style:
voices cut from the shared meetings by their RTTMs, gaps, interruptions, long overlaps and
back-channels planted) with their exact reference turns as `turns`, the `turn_events` that
`transforms.turn_events.detect` finds on those turns, and one segment per turn with synthetic
words (unique names every 0.3 s). The answers are then recomputed here from the conversation's
own reference (`c.reference`: who speaks when; `c.events`: the events as planted; the synthetic
words' times), not from the tables and not with the exporter's code.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmcurate.pipelines import cli
from mmcurate.pipelines.export import run_export
from mmcurate.schemas.records import Segment, Transcript, Word, to_table
from mmcurate.transforms.turn_events import detect, event_rows

from test_export_duplex import RUN, SAMPLE_WAV, SR, _source

pytestmark = pytest.mark.skipif(not SAMPLE_WAV.is_file(), reason="shared media not available")

VOICES = ("sample_spk90", "sample_spk91", "ami_fee087")
SEEDS = (1, 2)
CLIP_S = 15.0
MULTIPLE_CHOICE = ("count", "first", "last", "order", "duration")


# ------------------------------------------------------------------ a small consistent output


def _words(s: float, e: float, tag: str) -> list[Word]:
    """Synthetic words every 0.3 s inside [s, e), unique names."""
    out, t, n = [], s + 0.02, 0
    while t + 0.2 <= e:
        out.append(Word(f" {tag}w{n}", round(t, 3), round(t + 0.2, 3), 0.9))
        n += 1
        t += 0.3
    return out


def write_conversations(out: Path, sources: list[tuple[str, Path, object, float | None]]) -> dict:
    """An output of conversations (sid, media, Conversation, diarization_confidence): turns from
    the reference (speaker labels f"{sid}-spk{k}" by first turn), the turn_events detect() finds
    on them, one segment per turn with synthetic words. Returns {sid: (labels voice->label,
    {turn_id: (start, end, voice)}, {event_id: row}, {word: (start, end)})}."""
    from test_turns_audit import turn_rows

    recs, segs, turns, events, transcripts, known = [], [], [], [], [], {}
    for sid, media, c, confidence in sources:
        recs.append(_source(sid, media))
        rows = [dataclasses.replace(r, diarization_confidence=confidence) for r in turn_rows(sid, c.reference)]
        turns += rows
        labels: dict[str, str] = {}
        for s, e, v in sorted(c.reference, key=lambda t: (t[0], t[1])):
            labels.setdefault(v, f"{sid}-spk{len(labels)}")
        by_id = {r.turn_id: (r.start, r.end, v) for r, (_s, _e, v) in
                 zip(rows, sorted(c.reference, key=lambda t: (t[0], t[1])))}
        found = detect([(r.speaker, r.start, r.end) for r in rows])
        ev = event_rows(sid, found, RUN, "reference", confidence)
        events += ev
        words_at = {}
        for n, r in enumerate(rows):
            ws = _words(r.start, r.end, f"{sid[:2]}t{n}")
            words_at.update({w.word.strip(): (w.start, w.end) for w in ws})
            segs.append(Segment(segment_id=f"{sid}-seg-{n:05d}", source_id=sid, start=r.start, end=r.end,
                                speaker=r.speaker, text="".join(w.word for w in ws).strip(), language="en",
                                language_probability=0.9, words=ws, avg_logprob=-0.2, no_speech_prob=0.1,
                                compression_ratio=1.5, asr_model="whisper-base", asr_model_version="test",
                                diarization_model="reference", audio_uri=f"{media}#t={r.start},{r.end}",
                                audio=None, run_id=RUN))
        transcripts.append(Transcript(sid, "[spk0] ...", "en", 0.9, len(labels), len(rows),
                                      sum(len(s.words) for s in segs if s.source_id == sid), 1.0, "whisper-base",
                                      "reference", RUN, diarization_confidence=confidence))
        known[sid] = (labels, by_id, {e.event_id: e for e in ev}, words_at)
    tables = {"sources": recs, "segments": segs, "transcripts": transcripts, "turns": turns, "turn_events": events}
    for table, records in tables.items():
        (out / table).mkdir(parents=True, exist_ok=True)
        pq.write_table(to_table(table, records), out / table / "part-00000.parquet")
    (out / "manifest.json").write_text(json.dumps({
        "run_id": RUN, "finished_at": "2026-01-01T00:00:00Z", "code_version": "test", "config": "{}",
        "inputs": sorted({str(m) for _, m, _, _ in sources}), "models": [],
        "tables": {t: len(r) for t, r in tables.items()}, "stage_counts": {}, "rejected": {},
        "shards": [f"{t}/part-00000.parquet" for t in tables]}))
    return known


def _same_bytes(a: Path, b: Path) -> None:
    names = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()) and names
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n


def read_items(to: Path) -> list[dict]:
    return [r for f in sorted(to.glob("qa-*.parquet")) for r in pq.read_table(f).to_pylist()]


class _Solo:
    """A one-speaker 'conversation': the first voice's turns of another one."""

    def __init__(self, c):
        v = c.reference[0][2]
        self.reference = [t for t in c.reference if t[2] == v]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import soundfile as sf
    from conversations import EVENTS, conversation

    root = tmp_path_factory.mktemp("qa")
    sources, convs = [], {}
    for seed in SEEDS:
        c = conversation(VOICES, 1.5, seed, EVENTS)
        media = root / f"conv{seed}.wav"
        sf.write(str(media), c.audio, SR, subtype="PCM_16")
        sid = f"c{seed}" * 8
        sources.append((sid, media, c, 0.9 if seed == 1 else None))
        convs[sid] = c
    import shutil

    shutil.copy(root / "conv1.wav", root / "conv1-again.wav")  # one input per source
    shutil.copy(root / "conv2.wav", root / "conv2-solo.wav")
    low = ("10" * 8, root / "conv1-again.wav", convs["c1" * 8], 0.3)  # the same talk, an unsure diarizer
    solo = ("50" * 8, root / "conv2-solo.wav", _Solo(convs["c2" * 8]), 0.9)
    known = write_conversations(root / "out", sources + [low, solo])
    convs[low[0]] = low[2]
    to = root / "qa"
    summary = run_export(str(root / "out"), "qa", str(to), shard_size=1, clip_s=CLIP_S)
    return root, convs, known, summary, read_items(to)


# ------------------------------------------------------------------ the reference answers


def _clip_voices(c, a: float, b: float) -> dict[str, float]:
    speech: dict[str, float] = {}
    for s, e, v in c.reference:
        d = min(e, b) - max(s, a)
        if d > 0:
            speech[v] = speech.get(v, 0.0) + d
    return {v: d for v, d in speech.items() if d >= 0.2 - 1e-9}


def reference_answer(item: dict, c, known) -> tuple[str, float | None]:
    """The answer from the conversation itself: (answer, its true seconds for duration)."""
    labels, turns, events, words_at = known
    voice_of = {lab: v for v, lab in labels.items()}
    a, b = item["clip_start"], item["clip_end"]
    kind, subject = item["kind"], item["reference"][0]
    if kind == "count":
        return str(len(_clip_voices(c, a, b))), None
    if kind in ("first", "last"):
        present = _clip_voices(c, a, b)
        parts = [(max(s, a), min(e, b), v) for s, e, v in c.reference if v in present and min(e, b) > max(s, a)]
        pick = min(parts) if kind == "first" else max(parts, key=lambda p: p[1])
        return labels[pick[2]], None
    if kind == "order":
        return min(item["options"], key=lambda text: words_at[text.split()[0]][0]), None
    if kind == "duration":
        if subject in turns:  # a turn: its reference piece
            s, e, _v = turns[subject]
            true = [e2 - s2 for s2, e2, _ in c.reference if abs(s2 - s) < 1e-6]
            return None, true[0] if true else None
        ev = events[subject]
        if ev.kind == "gap":
            true = [p[2] - p[1] for p in c.events if p[0] == "gap" and labels[p[3]] == ev.speaker
                    and abs(p[2] - ev.end) < 0.05]
            return None, true[0] if true else None
        v = voice_of[ev.speaker]  # a pause: the voice's silence between two of its pieces
        ends = [e for s, e, w in c.reference if w == v and abs(e - ev.start) < 0.05]
        nxt = [s for s, e, w in c.reference if w == v and ends and s > ends[0] + 1e-6]
        return None, (min(nxt) - ends[0]) if ends and nxt else None
    if kind == "interrupt":
        x, y = item["question"][len("Does "):].split(" in this clip?")[0].split(" interrupt ")
        yes = any(p[0] in ("interruption", "overlap", "unclear") and labels[p[3]] == x and p[4] is not None
                  and labels[p[4]] == y and a <= p[1] < b for p in c.events)
        return ("yes" if yes else "no"), None
    if kind == "backchannel":
        if subject in events:
            s, spk = events[subject].start, events[subject].speaker
        else:
            s, _e, v = turns[item["reference"][1]]
            spk = labels[v]
        yes = any(p[0] == "backchannel" and labels[p[3]] == spk and abs(p[1] - s) < 0.05 for p in c.events)
        return ("yes" if yes else "no"), None
    raise AssertionError(kind)


def agrees(item: dict, c, known) -> bool:
    answer, seconds = reference_answer(item, c, known)
    if item["kind"] == "duration":
        return seconds is not None and abs(float(item["answer"]) - seconds) <= item["tolerance_s"]
    return item["answer"] == answer


def _of(built, kind: str) -> list[dict]:
    items = [it for it in built[4] if it["kind"] == kind]
    assert len(items) >= 3, (kind, len(items))
    return items


def _check_kind(built, kind: str, share: float = 0.98) -> list[dict]:
    _root, convs, known, _summary, _items = built
    items = _of(built, kind)
    wrong = [it for it in items if not agrees(it, convs[it["source_id"]], known[it["source_id"]])]
    assert len(wrong) <= (1 - share) * len(items), wrong
    return items


# ------------------------------------------------------------------ the acceptance


def test_answers_agree_with_the_reference(built):
    """>= 98 % of all items' answers are the ones the conversation's own reference gives."""
    _root, convs, known, summary, items = built
    assert len(items) >= 60 and set(summary["items"]) == {"count", "first", "last", "order", "duration",
                                                          "interrupt", "backchannel"}
    wrong = [it for it in items if not agrees(it, convs[it["source_id"]], known[it["source_id"]])]
    assert len(wrong) <= 0.02 * len(items), [(it["kind"], it["question"], it["answer"]) for it in wrong]


def test_count(built):
    items = _check_kind(built, "count", 1.0)
    assert {it["answer"] for it in items} <= {"1", "2", "3"} and "3" in {it["answer"] for it in items}


def test_first_and_last(built):
    for kind in ("first", "last"):
        items = _check_kind(built, kind, 1.0)
        for it in items:
            assert it["answer"].startswith(it["source_id"] + "-spk")
            assert all(o.startswith(it["source_id"] + "-spk") for o in it["options"])


def test_order(built):
    _root, _convs, known, _s, _i = built
    for it in _check_kind(built, "order", 1.0):
        words_at = known[it["source_id"]][3]
        first = words_at[it["answer"].split()[0]]
        for o in it["options"]:
            if o != it["answer"]:
                start = words_at[o.split()[0]][0]
                assert start - first[0] >= 1.0 and start >= first[1] - 1e-9


def test_duration(built):
    items = _check_kind(built, "duration")
    assert {it["reference"][0].split("-")[1] for it in items} >= {"turn", "event"}
    for it in items:
        d, tol = float(it["answer"]), it["tolerance_s"]
        assert tol == pytest.approx(max(0.2, 0.1 * d), abs=1e-3)
        values = sorted(float(o) for o in it["options"])
        assert all(y - x > tol for x, y in zip(values, values[1:])), it["options"]  # spaced beyond it
        assert all(v > 0 for v in values)


def test_interrupt(built):
    items = _check_kind(built, "interrupt")
    assert {it["answer"] for it in items} == {"yes", "no"}
    assert all(sorted(it["options"]) == ["no", "yes"] and it["tolerance_s"] is None for it in items)


def test_backchannel(built):
    items = _check_kind(built, "backchannel")
    assert {it["answer"] for it in items} == {"yes", "no"}
    assert all(sorted(it["options"]) == ["no", "yes"] for it in items)


# ------------------------------------------------------------------ options, drops, layout


def _check_options(items: list[dict], n: int) -> None:
    for it in items:
        if it["kind"] in MULTIPLE_CHOICE:
            assert len(it["options"]) == n + 1 and len(set(it["options"])) == n + 1, it
            assert it["options"].count(it["answer"]) == 1
        else:
            assert sorted(it["options"]) == ["no", "yes"]


def test_distractors_as_configured(built, tmp_path):
    root, _c, _k, summary, items = built
    _check_options(items, 3)
    assert summary["options"]["distractors"] == 3
    ten = run_export(str(root / "out"), "qa", str(tmp_path / "ten"), clip_s=CLIP_S, distractors=10)
    got = read_items(tmp_path / "ten")
    _check_options(got, 10)
    assert {it["item_id"] for it in got} <= {it["item_id"] for it in items} and ten["options"]["distractors"] == 10
    # the shuffle moves the answer around
    assert len({it["options"].index(it["answer"]) for it in got if it["kind"] in MULTIPLE_CHOICE}) >= 5
    with pytest.raises(ValueError, match="--distractors"):
        run_export(str(root / "out"), "qa", str(tmp_path / "bad"), distractors=11)
    with pytest.raises(ValueError, match="apply to the qa format"):
        run_export(str(root / "out"), "duplex", str(tmp_path / "bad"), clip_s=10.0)


def test_low_confidence_dropped_and_counted_one_speaker_skipped(built):
    root, convs, known, summary, items = built
    low = "10" * 8
    assert not [it for it in items if it["source_id"] in (low, "50" * 8)]
    assert summary["sources_skipped"] == 1 and summary["sources_low_confidence"] == 1
    # the unsure source is the same talk as c1...: it would have given the same items
    twin = [it for it in items if it["source_id"] == "c1" * 8]
    assert sum(summary["dropped_low_confidence"].values()) == len(twin) > 0
    assert {k: v for k, v in summary["dropped_low_confidence"].items()} == {
        k: sum(1 for it in twin if it["kind"] == k) for k in {it["kind"] for it in twin}}
    written = json.loads((root / "qa" / "summary.json").read_text())
    assert written["items"] == {k: sum(1 for it in items if it["kind"] == k) for k in written["items"]}
    assert written["dropped_low_confidence"] == summary["dropped_low_confidence"]
    assert all(it["diarization_confidence"] in (0.9, None) for it in items)


def test_a_lower_threshold_keeps_the_unsure_source(built, tmp_path):
    root, _c, _k, summary, items = built
    kept = run_export(str(root / "out"), "qa", str(tmp_path / "all"), clip_s=CLIP_S, min_confidence=0.2)
    got = read_items(tmp_path / "all")
    twin = [it for it in items if it["source_id"] == "c1" * 8]
    again = [it for it in got if it["source_id"] == "10" * 8]
    same = lambda x: x.replace("10" * 8, "c1" * 8).replace("10t", "c1t")  # noqa: E731 (labels, word names)
    # the same talk, the same items (order and the no-pair of interrupt are drawn by source id)
    assert [(it["kind"], same(it["answer"])) for it in again if it["kind"] not in ("order", "interrupt")] == [
        (it["kind"], it["answer"]) for it in twin if it["kind"] not in ("order", "interrupt")]
    assert len(again) == len(twin)
    assert kept["dropped_low_confidence"] == {} and kept["sources_low_confidence"] == 0
    # the unsure source's overlapped first/last drops are counted once it is kept, not before
    assert sum(kept["dropped_overlapped"].values()) > sum(summary["dropped_overlapped"].values())


def test_clips_ids_and_bytes(built, tmp_path, capsys):
    """Clips cut on the source timeline; ids unique; the CLI resumes and gives the same bytes."""
    root, _c, _k, summary, items = built
    assert len({it["item_id"] for it in items}) == len(items)
    for it in items:
        assert it["clip_start"] % CLIP_S == 0 and 0 < it["clip_end"] - it["clip_start"] <= CLIP_S
    to = tmp_path / "again"
    assert cli.main(["export", str(root / "out"), "--format", "qa", "--to", str(to), "--shard-size", "1",
                     "--clip-s", str(CLIP_S)]) == 0
    printed = capsys.readouterr().out
    assert "1 source(s) with fewer than 2 speakers skipped" in printed and "dropped for diarization" in printed
    _same_bytes(root / "qa", to)
    (to / "qa-000001.parquet").unlink()  # a killed export: one shard missing
    again = run_export(str(root / "out"), "qa", str(to), shard_size=1, clip_s=CLIP_S)
    assert again["shards_skipped"] == again["shards"] - 1
    _same_bytes(root / "qa", to)
    other = run_export(str(root / "out"), "qa", str(to), shard_size=1, clip_s=20.0)  # other options: all again
    assert other["shards_skipped"] == 0


def test_voices_name_each_label_by_a_moment_it_talks_alone(built):
    """A listener tells the labels apart by `voices`: at each speaker's `alone_at` the reference
    has that voice and nobody else; questions about speakers carry the legend."""
    _root, convs, known, _summary, items = built
    checked = 0
    for it in items:
        c = convs[it["source_id"]]
        labels = known[it["source_id"]][0]
        voice_of = {lab: v for v, lab in labels.items()}
        for entry in it["voices"]:
            if entry["alone_at"] is None:
                continue
            t = it["clip_start"] + entry["alone_at"]
            talking = {v for s, e, v in c.reference if s <= t < e}
            assert talking == {voice_of[entry["speaker"]]}, (it["item_id"], entry, talking)
            checked += 1
        if it["kind"] in ("first", "last", "interrupt"):
            assert " Voices: " in it["question"] and "is the voice at" in it["question"], it["question"]
    assert checked >= 20
