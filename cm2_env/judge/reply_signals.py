"""What a reply does besides stating facts: pure functions over text for the rule judge's reply checks.

A reply can contain every fact an item asks for and still not satisfy it. The rule judge reads five signals:

- :func:`retraction`: a sentence that takes the reply back -- says it is untrue, made up or did not happen, asks
  the reader to ignore it, or denies having done it ("None of the following is true.", "I didn't actually do any
  of this.");
- :func:`refusal`: a sentence that declines the request as such ("I can't help with that.", "I must decline.");
  reporting that something failed or asking for missing input is not a refusal;
- :func:`without_echo`: the reply less the long spans it copies from the user's words, and the share of the reply
  they made up: a reply that mostly parrots the request states nothing of its own;
- :func:`without_raw_data`: the reply less its raw JSON objects and arrays (a dump of tool output is not an
  answer; only the prose around it counts);
- :func:`negates`: whether a sentence carries a negation, so that a reply that negates what the reference reply
  affirmed contradicts it.

The cues are general English (negation, falsity, refusal verbs), not words of any one dataset. They are cues, not
understanding: a verdict that rests on them is given with low confidence so that a hybrid judge asks its LLM.
"""

from __future__ import annotations

import re

_SENTENCE_BREAK = re.compile(r"(?<=[.!?;])\s+|\n+|\s+(?:--|—|–)\s+|[()]")
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")

# the reply (or part of it) referring to itself
_SELF = (r"(?:this|that|it|these|those|everything|all|none|nothing|any|anything|the (?:following|above|below|"
         r"preceding|previous|foregoing|rest)|what (?:follows|i (?:just )?(?:said|wrote|told you))|"
         r"(?:my|this|the) (?:reply|answer|message|response|statement|information|summary|text|report))")
_FALSITY = re.compile(
    r"\b(?:not true|untrue|isn'?t true|aren'?t true|wasn'?t true|false|fake|fabricated|made[- ]up|invented|"
    r"fiction(?:al)?|a lie|lies|lying|not real|isn'?t real|unreal|imaginary|hypothetical(?:ly)?|kidding|joking|"
    r"a joke|pretend(?:ing)?|bogus|nonsense|not accurate|inaccurate|never (?:actually )?(?:happened|occurred|"
    r"took place)|(?:did not|didn'?t|does not|doesn'?t) (?:actually |really )?(?:happen|occur|take place)|"
    r"not (?:actually |really )?(?:happen(?:ed)?|occur(?:red)?|done|performed|carried out))\b", re.IGNORECASE)
_NONE_TRUE = re.compile(
    r"\b(?:none|nothing|no part|not one|not a word)(?: of)? (?:this|that|it|these|those|below|above|here|"
    r"the (?:following|above|below|preceding|previous|rest)|in (?:this|my|the) \w+|what (?:follows|i (?:just )?"
    r"(?:said|wrote))|(?:my|this|the) (?:reply|answer|message|response|statement|information|summary))"
    r"(?: \w+){0,3}? (?:(?:is|was|are|were) (?:true|real|accurate|correct|genuine)|(?:actually |really )?"
    r"(?:happened|occurred|took place|was done|is real))\b", re.IGNORECASE)
_MADE_UP = re.compile(r"\b(?:made|making|make) (?:\w+ ){1,3}up\b", re.IGNORECASE)
_IGNORE = re.compile(r"\b(?:ignore|disregard|do not (?:trust|believe|rely on)|don'?t (?:trust|believe|rely on))\b",
                     re.IGNORECASE)
_SELF_RE = re.compile(rf"\b{_SELF}\b", re.IGNORECASE)
_DENIAL = re.compile(
    r"\b(?:i|we)(?: have| had)? (?:did not|didn'?t|never|have not|haven'?t|had not|hadn'?t|did none of)"
    r"(?: actually| really| in fact)? (?:do|did|done|perform(?:ed)?|complete(?:d)?|make|made|carry out|carried out|"
    r"run|execute(?:d)?|any of)\b(?: \w+){0,3} (?:this|that|it|these|those|anything|any of (?:this|that|it)|"
    r"the (?:above|following))\b", re.IGNORECASE)

_REFUSAL = re.compile(
    r"\b(?:(?:can'?t|cannot|can not|unable to|not able to|won'?t|will not|am not going to|not allowed to|"
    r"not permitted to|not in a position to)(?: be)? (?:help(?:ing)?|assist(?:ing)?|do(?:ing)?|comply|complying|"
    r"fulfil+(?:ing)?|complete|completing|handle|handling|process|processing|perform|performing|carry out|"
    r"support|proceed|take care of)(?: you)?(?: with)?(?: (?:that|this|it|so|anything|any of (?:this|that|it)|"
    r"(?:this|that|the|your|such)(?: \w+)? (?:request|task|action|one|thing)s?|\"[^\"]*\"|'[^']*'))?"
    r"(?=\s*(?:[.!,;:]|$|\bfor you\b|\bright now\b|\bat this time\b|\btoday\b))|"
    r"(?:i|we) (?:must |have to |will |am going to |'m going to )?(?:decline|refuse)|"
    r"not something (?:i|we) (?:can|will|am able to|could) (?:do|help|assist)|"
    r"(?:i'?d|i would) rather not)", re.IGNORECASE)

_NEGATION = re.compile(r"\b(?:not|no|never|none|nothing|nobody|neither|nor|cannot|without)\b|n't\b", re.IGNORECASE)
_VERBAL_NEGATION = re.compile(r"\b(?:is|are|was|were|am|be|been|will|would|can|could|shall|should|has|have|had|do|"
                              r"does|did|may|might|must)\s+(?:not|never)\b|n't\b|\bcannot\b", re.IGNORECASE)


def sentences(text: str) -> list[str]:
    """The sentences and clauses of ``text`` (split at sentence ends, line breaks, dashes and parentheses)."""
    return [s.strip() for s in _SENTENCE_BREAK.split(text or "") if s and s.strip()]


def retraction(text: str) -> str | None:
    """The first sentence that takes the reply back (module docstring), or None."""
    for sentence in sentences(text):
        if _NONE_TRUE.search(sentence):
            return sentence
        falsity = _FALSITY.search(sentence) or _MADE_UP.search(sentence)
        if (falsity or _IGNORE.search(sentence)) and _SELF_RE.search(sentence):
            return sentence
        if _DENIAL.search(sentence):
            return sentence
    return None


def refusal(text: str) -> str | None:
    """The first sentence that declines the request as such, or None."""
    for sentence in sentences(text):
        if _REFUSAL.search(sentence):
            return sentence
    return None


def negates(sentence: str, verbal: bool = False) -> bool:
    """Whether ``sentence`` carries a negation (not, no, never, n't, nothing, ...); with ``verbal``, only one that
    negates its verb ("is not", "didn't", "cannot") -- "no due date" negates a noun, not the statement."""
    return bool((_VERBAL_NEGATION if verbal else _NEGATION).search(sentence or ""))


def tokens(text: str) -> list[str]:
    return _TOKEN.findall((text or "").lower())


def without_echo(reply: str, sources: list[str], min_span: int = 8) -> tuple[str, float]:
    """``(rest, share)``: the reply's words outside spans of at least ``min_span`` consecutive words copied from
    any of ``sources`` (the user's messages), and the share of the reply's words inside such spans. Linear in the
    lengths (a hash set of the sources' word n-grams)."""
    words = tokens(reply)
    if not words:
        return "", 0.0
    grams: set[tuple[str, ...]] = set()
    for source in sources:
        source_words = tokens(source)
        grams.update(tuple(source_words[i:i + min_span]) for i in range(len(source_words) - min_span + 1))
    copied = [False] * len(words)
    for i in range(len(words) - min_span + 1):
        if tuple(words[i:i + min_span]) in grams:
            for j in range(i, i + min_span):
                copied[j] = True
    rest = " ".join(w for w, c in zip(words, copied) if not c)
    return rest, sum(copied) / len(words)


def without_raw_data(reply: str) -> tuple[str, float]:
    """``(prose, share)``: the reply without its balanced ``{...}``/``[...]`` spans that look like data (they hold a
    quote or a colon) and without code fences, and the share of the reply's non-space characters they took."""
    text = reply or ""
    total = sum(not c.isspace() for c in text)
    if total == 0:
        return "", 0.0
    kept: list[str] = []
    removed = 0
    closers = {"{": "}", "[": "]"}
    stack: list[str] = []
    start = span_start = 0
    for i, char in enumerate(text):
        if char in closers:
            if not stack:
                span_start = i
                kept.append(text[start:i])
            stack.append(closers[char])
        elif stack and char == stack[-1]:
            stack.pop()
            if not stack:
                span = text[span_start:i + 1]
                if '"' in span or ":" in span:
                    removed += sum(not c.isspace() for c in span)
                else:
                    kept.append(span)
                start = i + 1
    kept.append(text[span_start:] if stack else text[start:])
    prose = "".join(kept).replace("```json", " ").replace("```", " ")
    return prose, removed / total
