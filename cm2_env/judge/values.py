"""Value extraction and comparison for the rule judge: pure functions over text and JSON.

- ``facts(text)``: the checkable values a text states, as canonical tokens (times ``T18:30``, dates ``D09-12``,
  e-mail addresses, identifiers such as ``4f-7a1d``, numbers ``N85``), so "6:30 PM", "18:30" and "18:30:00" agree.
- ``values_agree(a, b)``: whether two argument values say the same thing (case, whitespace, number format,
  date-time format, list order and paraphrased free text are forgiven).
- ``leaf_pairs(value)``: the (key, scalar) pairs of a JSON value, for matching tool results.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Iterator

_MONTHS = {m: i for i, m in enumerate(
    ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
     "november", "december"], start=1)}
_MONTH_RE = "|".join(sorted({*_MONTHS, *(m[:3] for m in _MONTHS), "sept"}, key=len, reverse=True))
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_NAMED_DATE = re.compile(rf"\b({_MONTH_RE})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?:,?\s+(\d{{4}}))?", re.IGNORECASE)
_DAY_MONTH = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_RE})\b", re.IGNORECASE)
_TIME = re.compile(r"\b(\d{1,2})(?::(\d{2}))?(?::\d{2})?\s*(a\.?m\.?|p\.?m\.?)?(?![\w:])", re.IGNORECASE)
# Each pattern may only start where its token starts (the lookbehinds): scanning a long unbroken token from every
# position inside it would make the extraction quadratic in the token's length.
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_IDENT = re.compile(r"(?<![\w-])(?=[\w-]*\d)(?=[\w-]*[a-zA-Z])[A-Za-z0-9]+(?:-[A-Za-z0-9]+)+\b")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:,\d{3})*(?:\.\d+)?(?![\w])")
_WORD = re.compile(r"[a-z0-9]+")
_DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d", "%H:%M:%S", "%H:%M")


def _month(name: str) -> int:
    name = name.lower().rstrip(".")
    return _MONTHS.get(name) or next(v for k, v in _MONTHS.items() if k.startswith(name[:3]))


def facts(text: str) -> set[str]:
    """Canonical tokens of the dates, times, e-mails, identifiers and numbers stated in ``text``.

    A clock time without am/pm and an hour <= 12 yields both readings (``T06:30`` and ``T18:30``): the rule judge
    must not fail a reply for leaving the half of the day implicit.
    """
    return facts_and_rest(text)[0]


def facts_and_rest(text: str) -> tuple[set[str], str]:
    """:func:`facts` of ``text`` and the text that remains once the spans stating them are blanked out."""
    found: set[str] = set()
    rest = text or ""
    for match in _EMAIL.finditer(rest):
        found.add("E" + match.group(0).lower())
    rest = _EMAIL.sub(" ", rest)
    for pattern, parts in ((_ISO_DATE, lambda m: (int(m.group(2)), int(m.group(3)))),
                           (_NAMED_DATE, lambda m: (_month(m.group(1)), int(m.group(2)))),
                           (_DAY_MONTH, lambda m: (_month(m.group(2)), int(m.group(1))))):
        for match in pattern.finditer(rest):
            month, day = parts(match)
            if 1 <= month <= 12 and 1 <= day <= 31:
                found.add(f"D{month:02d}-{day:02d}")
        rest = pattern.sub(" ", rest)
    for match in _IDENT.finditer(rest):
        found.add("I" + match.group(0).lower())
    rest = _IDENT.sub(" ", rest)
    def clock(match: re.Match) -> str:
        hour, minute, half = int(match.group(1)), match.group(2), (match.group(3) or "").lower().replace(".", "")
        if minute is None and not half:
            return match.group(0)  # a bare number, handled below
        if hour > 24 or (minute is not None and int(minute) > 59):
            return match.group(0)
        minutes = int(minute or 0)
        if half:
            hour = hour % 12 + (12 if half == "pm" else 0)
            found.add(f"T{hour:02d}:{minutes:02d}")
        else:
            found.add(f"T{hour:02d}:{minutes:02d}")
            if hour < 12:
                found.add(f"T{(hour + 12) % 24:02d}:{minutes:02d}")
        return " "

    rest = _TIME.sub(clock, rest)
    for match in _NUMBER.finditer(rest):
        found.add("N" + _number_token(match.group(0).replace(",", "")))
    return found, _NUMBER.sub(" ", rest)


def _number_token(text: str) -> str:
    value = float(text)
    return str(int(value)) if value.is_integer() else repr(value)


_STOP = set("""a an the did does do was were is are has have had assistant reply user users agent tool tools their
they them it its this that these those of to for in on at by with from and or as be been being any all about
into than then there what which who whom whose when where how if so such also only both either each other
ask asked tell told say said state stated mention mentioned confirm confirmed report reported provide provided
give gave given let inform informed whether""".split())


def content_words(text: str) -> set[str]:
    """The 5-letter stems of the words of ``text`` that carry content (no stop words, longer than 2 letters)."""
    return {w[:5] for w in words(text) if w not in _STOP and len(w) > 2}


def time_variant_present(token: str, said: set[str]) -> bool:
    """Whether the other half-of-day reading of time token ``token`` (``T06:30`` <-> ``T18:30``) is in ``said``."""
    hour, minute = int(token[1:3]), token[4:6]
    return f"T{(hour + 12) % 24:02d}:{minute}" in said


def words(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def normalise_text(value: str) -> str:
    return " ".join(words(value))


def _as_datetime(value: str) -> datetime | None:
    for fmt in _DATETIME_FORMATS:
        try:
            return datetime.strptime(value.strip(), fmt)
        except ValueError:
            continue
    return None


def is_free_text(value: Any) -> bool:
    """Prose (a message body, a description) rather than a value: compared by word overlap, not equality."""
    return isinstance(value, str) and sum(not w.isdigit() for w in words(value)) >= 6


def values_agree(expected: Any, actual: Any) -> bool:
    """Whether ``actual`` states the same as ``expected`` (see the module docstring)."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected == actual
    if isinstance(expected, (int, float)) or isinstance(actual, (int, float)):
        try:
            return float(expected) == float(actual)
        except (TypeError, ValueError):
            return False
    if isinstance(expected, list):
        if not isinstance(actual, list):
            actual = [actual]
        remaining = list(actual)
        for item in expected:
            match = next((i for i, other in enumerate(remaining) if values_agree(item, other)), None)
            if match is None:
                return False
            remaining.pop(match)
        return not remaining
    if isinstance(expected, dict):
        return isinstance(actual, dict) and set(expected) == set(actual) and all(
            values_agree(v, actual[k]) for k, v in expected.items())
    if expected is None or actual is None:
        return expected is actual
    if not isinstance(actual, str):
        actual = json.dumps(actual)
    expected_text, actual_text = str(expected), actual
    if normalise_text(expected_text) == normalise_text(actual_text):
        return True
    when_expected, when_actual = _as_datetime(expected_text), _as_datetime(actual_text)
    if when_expected is not None and when_actual is not None:
        return when_expected == when_actual
    if is_free_text(expected_text):
        return texts_overlap(expected_text, actual_text)
    return False


def texts_overlap(expected: str, actual: str, share: float = 0.5) -> bool:
    """Paraphrase-tolerant agreement of two free texts: at least ``share`` of the expected words are in the actual
    text AND at least ``share`` of the actual words are expected -- so a text padded with unrelated words, or a
    text that drops most of the expected one, does not agree."""
    expected_words, actual_words = set(words(expected)), set(words(actual))
    if not expected_words or not actual_words:
        return expected_words == actual_words
    common = len(expected_words & actual_words)
    return common >= share * len(expected_words) and common >= share * len(actual_words)


def leaf_pairs(value: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(key, scalar) for every scalar in a JSON value; list items inherit their list's key."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaf_pairs(v, str(k))
    elif isinstance(value, list):
        for v in value:
            yield from leaf_pairs(v, key)
    else:
        yield key, value


def parse_fragment(snippet: str) -> Any:
    """A JSON value from a (possibly partial) JSON snippet such as ``"min_temp": 50, "max_temp": 90``, or None."""
    text = snippet.strip().rstrip(",")
    for candidate in (text, "{" + text + "}", "{" + text, text + "}", "{" + text + "}}"):
        try:
            return json.loads(candidate)
        except ValueError:
            continue
    pairs = re.findall(r'"([^"]+)"\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?|true|false|null)', text)
    if not pairs:
        return None
    out = {}
    for key, raw in pairs:
        try:
            out[key] = json.loads(raw)
        except ValueError:
            continue
    return out or None
