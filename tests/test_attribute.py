"""Speaker attribution and utterance cutting on hand-made words and turns (no models)."""

from __future__ import annotations

import random

import pytest

from mmcurate.schemas.records import AsrResult, AsrSegment, Turn, Word
from mmcurate.transforms.attribute import assign_speakers, cut_utterances, is_sentence_end, join_words


def W(text: str, start: float, end: float, p: float = 0.9) -> Word:
    return Word(text, start, end, p)


def asr_of(*segments: AsrSegment, language: str = "en") -> AsrResult:
    return AsrResult(language, 0.99, list(segments), "fake-asr", "0")


def seg(words: list[Word], lp: float = -0.3, nsp: float = 0.1, cr: float = 1.5) -> AsrSegment:
    return AsrSegment(
        words[0].start, words[-1].end, join_words(words), words,
        avg_logprob=lp, no_speech_prob=nsp, compression_ratio=cr,
    )


# ---------------------------------------------------------------- assign_speakers


def test_word_goes_to_the_speaker_with_most_overlap():
    turns = [Turn(0.0, 1.2, 0), Turn(1.2, 3.0, 1)]
    words = [
        W(" a", 0.1, 0.5),  # inside 0
        W(" b", 1.0, 1.6),  # 0.2 in spk0, 0.4 in spk1 -> 1
        W(" c", 1.1, 1.25),  # 0.1 vs 0.05 -> 0
        W(" d", 2.0, 2.5),  # inside 1
    ]
    assert assign_speakers(words, turns) == [0, 1, 0, 1]


def test_overlap_is_summed_over_a_speakers_turns():
    # spk1 has two short turns that together overlap the word more than spk0's one turn
    turns = [Turn(0.0, 1.0, 1), Turn(1.0, 1.4, 0), Turn(1.4, 3.0, 1)]
    assert assign_speakers([W(" x", 0.7, 1.6)], turns) == [1]  # 0.3+0.2 vs 0.4


def test_word_outside_turns_takes_nearest_within_one_second_else_none():
    turns = [Turn(0.0, 1.0, 0), Turn(5.0, 6.0, 1)]
    words = [
        W(" near0", 1.3, 1.5),  # 0.3 s after spk0
        W(" near1", 4.4, 4.6),  # 0.4 s before spk1
        W(" far", 2.5, 2.9),  # 1.5 s from both -> None
        W(" late", 7.2, 7.4),  # 1.2 s after spk1 -> None
        W(" point", 5.5, 5.5),  # zero-length word inside spk1
    ]
    assert assign_speakers(words, turns) == [0, 1, None, None, 1]


def test_no_turns_means_no_speaker():
    assert assign_speakers([W(" a", 0, 1)], []) == [None]


def test_assignment_is_independent_of_turn_order_and_handles_overlapping_turns():
    turns = [Turn(3.0, 9.0, 1), Turn(0.0, 4.0, 0), Turn(8.0, 8.5, 2)]
    words = [W(" a", 0.5, 1.0), W(" b", 3.2, 3.9), W(" c", 5.0, 6.0), W(" d", 8.1, 8.4)]
    got = assign_speakers(words, turns)
    # b: fully inside both 0 and 1 (tie) -> the one holding the midpoint; both do -> lower index
    assert got == [0, 0, 1, 1]
    assert assign_speakers(words, list(reversed(turns))) == got


# ---------------------------------------------------------------- cut_utterances


def test_cut_at_speaker_change():
    words = [W(" so", 0.0, 0.3), W(" what", 0.3, 0.6), W(" yes", 0.7, 1.0), W(" indeed", 1.0, 1.4)]
    turns = [Turn(0.0, 0.65, 0), Turn(0.65, 2.0, 1)]
    utts = cut_utterances(asr_of(seg(words)), turns, source_id="src")
    assert [u.text for u in utts] == ["so what", "yes indeed"]
    assert [u.speaker for u in utts] == [0, 1]
    assert [u.segment_id for u in utts] == ["src-seg-00000", "src-seg-00001"]
    assert (utts[0].start, utts[0].end) == (0.0, 0.6)
    assert (utts[1].start, utts[1].end) == (0.7, 1.4)


def test_cut_at_sentence_end_and_long_pause_but_not_abbreviations():
    words = [
        W(" Hello", 0.0, 0.4), W(" there.", 0.4, 0.8),
        W(" Is", 0.9, 1.0), W(" Mr.", 1.0, 1.2), W(" Smith", 1.2, 1.5), W(" in?", 1.5, 1.8),
        W(" Wait", 1.9, 2.1), W(" then", 3.2, 3.5),  # 1.1 s pause
        W(" yes!", 3.6, 3.9), W(" ok", 4.0, 4.2),
    ]
    utts = cut_utterances(asr_of(seg(words)), [], source_id="s")
    assert [u.text for u in utts] == ["Hello there.", "Is Mr. Smith in?", "Wait", "then yes!", "ok"]
    assert all(u.speaker == 0 for u in utts)  # no turns given: one speaker


def test_sentence_end_detection():
    assert is_sentence_end(" done.") and is_sentence_end("why?\"") and is_sentence_end("wow!")
    assert not is_sentence_end(" Dr.") and not is_sentence_end(" so,") and not is_sentence_end("a")


def test_words_keep_times_and_probability():
    words = [W(" one", 0.0, 0.2, 0.5), W(" two.", 0.3, 0.6, 0.75)]
    (u,) = cut_utterances(asr_of(seg(words)), [Turn(0, 1, 3)], source_id="s")
    assert u.words == words
    assert u.speaker == 0  # diarizer's index 3 renumbered


def test_thirty_second_cap_with_many_words():
    rng = random.Random(7)
    words, t = [], 0.0
    for i in range(600):  # ~3 minutes of one speaker, no punctuation, short pauses only
        d = rng.uniform(0.15, 0.45)
        words.append(W(f" w{i}", round(t, 3), round(t + d, 3), rng.random()))
        t += d + rng.choice([0.0, 0.05, 0.1, 0.3, 0.6, 0.9])
    segments = [seg(words[i : i + 40]) for i in range(0, len(words), 40)]
    utts = cut_utterances(asr_of(*segments), [Turn(0, t + 1, 0)], source_id="s", max_duration_s=30)
    assert len(utts) >= 6
    assert all(u.words for u in utts), "an utterance is empty"
    assert max(u.duration for u in utts) <= 30.0
    flat = [w for u in utts for w in u.words]
    assert flat == words  # nothing lost, duplicated or reordered
    assert [u.start for u in utts] == sorted(u.start for u in utts)
    assert all(u.text == join_words(u.words) for u in utts)


def test_long_run_is_split_at_the_largest_inner_pause():
    words = [W(f" a{i}", i * 0.5, i * 0.5 + 0.4) for i in range(20)]  # 0..9.9 s, gaps 0.1
    words += [W(f" b{i}", 10.8 + i * 0.5, 10.8 + i * 0.5 + 0.4) for i in range(20)]  # gap 0.9
    utts = cut_utterances(asr_of(seg(words)), [], source_id="s", max_duration_s=15)
    assert [len(u.words) for u in utts] == [20, 20]


def test_speakers_renumbered_by_first_appearance():
    words = [W(" a.", 0.0, 0.5), W(" b.", 1.0, 1.5), W(" c.", 2.0, 2.5), W(" d.", 3.0, 3.5)]
    turns = [Turn(0, 0.8, 7), Turn(0.8, 1.8, 2), Turn(1.8, 2.8, 7), Turn(2.8, 4, 5)]
    utts = cut_utterances(asr_of(seg(words)), turns, source_id="s")
    assert [u.speaker for u in utts] == [0, 1, 0, 2]
    # same result whatever labels the diarizer used
    relabel = {7: 0, 2: 9, 5: 1}
    turns2 = [Turn(t.start, t.end, relabel[t.speaker]) for t in turns]
    assert [u.speaker for u in cut_utterances(asr_of(seg(words)), turns2, source_id="s")] == [
        0, 1, 0, 2,
    ]


def test_speaker_numbers_follow_the_turns_not_the_words():
    """A word the ASR hears in one run and not in the next must not swap two speakers' labels:
    numbers follow each speaker's first turn, and a speaker without words keeps its number."""
    turns = [Turn(0, 1.0, 3), Turn(1.0, 2.0, 8), Turn(2.0, 3.0, 3), Turn(3.0, 4.0, 6)]
    every = [W(" a.", 0.1, 0.5), W(" b.", 1.1, 1.5), W(" c.", 2.1, 2.5), W(" d.", 3.1, 3.5)]
    full = cut_utterances(asr_of(seg(every)), turns, source_id="s")
    assert [(u.text, u.speaker) for u in full] == [("a.", 0), ("b.", 1), ("c.", 0), ("d.", 2)]
    # the first speaker's first word is not heard this time: speaker 8 speaks first in words
    fewer = cut_utterances(asr_of(seg(every[1:])), turns, source_id="s")
    assert [(u.text, u.speaker) for u in fewer] == [("b.", 1), ("c.", 0), ("d.", 2)]
    # speaker 8 has no words at all: 6 stays number 2
    none_of_8 = cut_utterances(asr_of(seg([every[0], every[2], every[3]])), turns, source_id="s")
    assert [(u.text, u.speaker) for u in none_of_8] == [("a.", 0), ("c.", 0), ("d.", 2)]


def test_words_outside_turns_become_unattributed_utterances():
    words = [W(" hi", 0.0, 0.3), W(" there", 0.3, 0.6), W(" lost", 5.0, 5.3), W(" words", 5.3, 5.6)]
    utts = cut_utterances(asr_of(seg(words)), [Turn(0.0, 1.0, 4)], source_id="s")
    assert [(u.text, u.speaker) for u in utts] == [("hi there", 0), ("lost words", None)]


def test_explicit_speakers_override_assignment():
    words = [W(" a", 0.0, 0.3), W(" b", 0.3, 0.6)]
    utts = cut_utterances(
        asr_of(seg(words)), [Turn(0, 1, 0)], source_id="s", speakers=[None, None]
    )
    assert [(u.text, u.speaker) for u in utts] == [("a b", None)]
    with pytest.raises(ValueError):
        cut_utterances(asr_of(seg(words)), [], source_id="s", speakers=[None])


def test_scores_carried_from_the_asr_segments():
    s1 = seg([W(" one", 0.0, 1.0), W(" two", 1.0, 3.0)], lp=-0.2, nsp=0.1, cr=1.0)
    s2 = seg([W(" three.", 3.0, 4.0)], lp=-1.0, nsp=0.4, cr=2.0)  # utterance spans both
    (u,) = cut_utterances(asr_of(s1, s2), [], source_id="s")
    assert u.text == "one two three."
    assert u.avg_logprob == pytest.approx((3 * -0.2 + 1 * -1.0) / 4)
    assert u.no_speech_prob == pytest.approx(0.4)
    assert u.compression_ratio == pytest.approx(1.5)


def test_segments_without_word_times_stand_alone():
    s = AsrSegment(2.0, 4.0, " no word times here", [], avg_logprob=-0.5)
    utts = cut_utterances(asr_of(s), [Turn(0, 10, 1)], source_id="s")
    assert [(u.text, u.speaker, u.words, u.start, u.end) for u in utts] == [
        ("no word times here", 0, [], 2.0, 4.0)
    ]


def test_empty_asr_gives_no_utterances():
    assert cut_utterances(asr_of(), [Turn(0, 1, 0)], source_id="s") == []


def test_join_words_styles():
    assert join_words([W(" Hello", 0, 1), W(",", 1, 1), W(" you", 1, 2)]) == "Hello, you"
    assert join_words([W("Hello", 0, 1), W("you", 1, 2)]) == "Hello you"
