"""Turn-taking events (transforms/turn_events.py): one test per kind on hand-made turns, and
the planted events of generated conversations found on their reference turns."""

from __future__ import annotations

import pytest

from mmcurate.transforms.turn_events import TurnEventsConfig, detect, event_rows

CFG = TurnEventsConfig()


def kinds(events):
    return [(e.kind, e.speaker, e.other_speaker, None if e.offset_s is None else round(e.offset_s, 3)) for e in events]


def test_a_gap_is_the_silence_before_the_next_speaker():
    ev = detect([("A", 0.0, 3.0), ("B", 3.4, 6.0)])
    assert kinds(ev) == [("gap", "B", "A", 0.4)]
    assert (ev[0].start, ev[0].end) == (3.0, 3.4)


def test_the_holder_stopping_soon_after_the_onset_is_an_interruption_and_talking_on_an_overlap():
    ev = detect([("A", 0.0, 3.0), ("B", 2.4, 6.0), ("A", 4.2, 9.0)])
    assert kinds(ev) == [("interruption", "B", "A", -0.6), ("overlap", "A", "B", -1.8)]
    # the split is configurable
    ev = detect([("A", 0.0, 3.0), ("B", 2.4, 6.0)], TurnEventsConfig(interruption_s=0.5))
    assert kinds(ev) == [("overlap", "B", "A", -0.6)]


def test_a_short_utterance_inside_a_turn_is_a_backchannel_and_does_not_take_the_floor():
    words = [("B", 2.05, 2.4, "Mm-hmm."), ("C", 7.3, 7.6, "Absolutely"), ("C", 7.6, 7.9, "wrong")]
    ev = detect([("A", 0.0, 5.0), ("B", 2.0, 2.5), ("C", 5.3, 9.0), ("A", 7.2, 8.0)], words=words, language="en")
    bc = [e for e in ev if e.kind == "backchannel"]
    assert [(e.speaker, e.other_speaker, e.num_words, e.text, e.lexical) for e in bc] == [
        ("B", "A", 1, "Mm-hmm.", True), ("A", "C", None, None, None)]
    # B never held the floor: the next transfer is from A
    assert kinds([e for e in ev if e.kind != "backchannel"]) == [("gap", "C", "A", 0.3)]
    # too many words, or too long: not a back-channel
    many = [("B", 2.0 + i / 10, 2.1 + i / 10, "w") for i in range(4)]
    assert not [e for e in detect([("A", 0.0, 5.0), ("B", 2.0, 2.5)], words=many) if e.kind == "backchannel"]
    assert not [e for e in detect([("A", 0.0, 5.0), ("B", 2.0, 3.5)]) if e.kind == "backchannel"]


def test_a_pause_is_the_holders_silence_and_short_ones_are_none():
    ev = detect([("A", 0.0, 2.0), ("A", 2.5, 4.0), ("A", 4.1, 5.0)])
    assert kinds(ev) == [("pause", "A", None, 0.5)]


def test_a_holder_pausing_while_the_newcomer_starts_yields_at_the_end_of_their_speech():
    # A pauses 0.25 s at 3.0, B starts in that pause, A says 0.6 s more: B interrupts A's last words
    ev = detect([("A", 0.0, 3.0), ("B", 3.1, 7.0), ("A", 3.25, 3.85)])
    assert kinds([e for e in ev if e.kind != "pause"]) == [("interruption", "B", "A", -0.75)]


def test_rows_have_ids_in_time_order_and_are_the_same_on_a_rerun():
    turns = [("s-spk0", 0.0, 3.0), ("s-spk1", 3.4, 6.0), ("s-spk0", 5.5, 9.0)]
    a = event_rows("s", detect(turns), "run-x", "m")
    b = event_rows("s", detect(list(reversed(turns))), "run-x", "m")
    assert a == b
    assert [r.event_id for r in a] == ["s-event-00000", "s-event-00001"]
    assert [r.start for r in a] == sorted(r.start for r in a)


@pytest.mark.parametrize("seed", [1, 2])
def test_planted_events_are_found_on_the_reference_turns(seed):
    """Generated conversations of voices cut from the shared recordings by their RTTMs (no model
    runs): every planted gap, interruption, overlap and back-channel of >= 0.2 s is found, of its
    kind, within 0.5 s (90 % at least), and the offsets are exact (90 %). The diarizer's turns are measured in
    bench/bench_turn_events.py."""
    import conversations as conv

    c = conv.conversation(("sample_spk90", "sample_spk91", "ami_fee087"), 1.5, seed, conv.EVENTS)
    found = detect([(v, s, e) for s, e, v in c.reference])
    planted = [p for p in c.events if p[0] in ("gap", "interruption", "overlap", "backchannel")
               and (p[2] - p[1] if p[0] == "backchannel" else abs(p[5])) >= 0.2]
    assert {p[0] for p in planted} == {"gap", "interruption", "overlap", "backchannel"}, planted

    def at(kind, a, b):
        return a if kind != "gap" else b

    missed, errors = [], []
    for kind, a, b, who, other, off in planted:
        hit = [e for e in found if e.kind == kind and abs(at(kind, e.start, e.end) - at(kind, a, b)) <= 0.5]
        if not hit:
            missed.append((kind, a, b, who, other, off))
        elif off is not None:
            errors.append(min(abs(e.offset_s - off) for e in hit))
    assert len(missed) <= 0.1 * len(planted), missed
    assert sorted(errors)[len(errors) // 2] < 0.01 and sum(x < 0.01 for x in errors) >= 0.9 * len(errors), errors
    wrong = [e for e in found if e.kind in ("gap", "interruption", "overlap", "backchannel")
             and not any(p[0] == e.kind and abs(at(e.kind, p[1], p[2]) - at(e.kind, e.start, e.end)) <= 0.5
                         for p in c.events)]
    assert len(wrong) <= 0.1 * len(found), wrong
