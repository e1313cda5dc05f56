"""Text language of transcripts and segments with langdetect, deterministic.

langdetect (a port of Google's language-detection: character n-gram profiles of 55 languages
that ship inside the wheel) samples n-grams at random; with a fixed seed its answer is a pure
function of the text. The detector factory here is our own instance (not langdetect's module
global), seeded with 0 and loaded once per process at first use; each call gets a fresh
detector with its own seeded `random.Random`, so threads never share state.

Codes are langdetect's ISO 639-1 codes with the region dropped ("zh-cn" -> "zh") so that they
compare with Whisper's. Text with nothing to detect (digits, punctuation) gives (None, None).
"""

from __future__ import annotations

import functools
import threading

SEED = 0


@functools.lru_cache(maxsize=1)
def _factory():
    from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

    f = DetectorFactory()
    f.load_profile(PROFILES_DIRECTORY)
    f.set_seed(SEED)
    return f


_lock = threading.Lock()


def factory():
    with _lock:  # the first call loads 55 profiles; later calls only read them
        return _factory()


def base_code(code: str | None) -> str | None:
    return None if code is None else code.split("-", 1)[0].lower()


def detect(text: str) -> tuple[str | None, float | None]:
    """(language, probability) of `text`'s most likely language, or (None, None)."""
    from langdetect.lang_detect_exception import LangDetectException

    if not text or not any(c.isalpha() for c in text):
        return None, None
    d = factory().create()
    d.append(text)
    try:
        probs = d.get_probabilities()
    except LangDetectException:
        return None, None
    if not probs:
        return None, None
    # several regional codes of one language (zh-cn, zh-tw) count together
    merged: dict[str, float] = {}
    for p in probs:
        code = base_code(p.lang)
        merged[code] = merged.get(code, 0.0) + float(p.prob)
    lang = max(sorted(merged), key=lambda k: merged[k])
    return lang, min(1.0, merged[lang])
