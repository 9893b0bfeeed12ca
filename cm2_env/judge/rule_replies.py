"""The rule judge's checks of what the assistant SAYS: items on the user-visible reply and on the reasoning.

:func:`text_item` decides a positive item ("did the reply give / confirm / ask X"), :func:`avoid_statements` an
"avoid X" item about statements. The checks, in order, for the reply:

1. what the reply says beside the facts (:mod:`cm2_env.judge.reply_signals`): a reply that takes itself back
   (says it is untrue or did not happen), refuses the request, or is mostly a copy of the user's words or of raw
   tool output states nothing of its own -- only its prose outside copied spans and raw data is read;
2. support: a reply about the outcome of a call that the reference made in this turn passes only when this
   transcript has a successful call to that tool -- a reply that confirms what did not happen fails (this reads
   the transcript, not the item's ``dependence``: dependencies gate the reward, never satisfaction);
3. content: the key values (dates, times, numbers, e-mails, identifiers) the item asks for must be stated, or,
   without key values, enough of the item's content words; a request ("did the assistant ask ...") must be one;
4. contradiction: a reply sentence carrying a key value or the item's words that is negated where the
   reference's sentence is not fails.

Confidence: 0.7 where key values decided, 0.6 for the signals and support, 0.4 where only word overlap did --
all below a hybrid judge's default threshold, so a hybrid judge asks its LLM about every reply item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cm2_env.data.models import ChecklistItem
from cm2_env.judge.reply_signals import negates, refusal, retraction, sentences, without_echo, without_raw_data
from cm2_env.judge.transcript_view import TurnView
from cm2_env.judge.values import content_words, facts, time_variant_present, words

REPLY = "assistant.content.user_visible_reply"
#: a reply that requests something: a question, or a request phrased as a statement ("I need your password")
_REQUEST = re.compile(r"\?|\b(?:need|needs|require|requires|please (?:enter|provide|give|send|tell|share|confirm|"
                      r"choose|specify)|let me know)\b", re.IGNORECASE)
_ASKS = re.compile(r"^did (?:the )?(?:assistant|reply|agent)(?: \w+)? (?:ask|request|prompt|check with|clarify)",
                   re.IGNORECASE)
_CLAIM = re.compile(r"\b(claim|claiming|already)\b", re.IGNORECASE)
_DONE = re.compile(r"\b(scheduled|created|booked|added|set up|sent|deleted|updated|registered|changed|reset|is set|"
                   r"has been|have been|done)\b", re.IGNORECASE)
#: stems too common in checklist questions to show that a reply addresses the item
_GENERIC = {"assis", "reply", "user", "confi", "wheth", "state", "menti", "corre"}
#: share of a reply that, once copied from the user (in spans of 8+ words) or from raw tool output, leaves it
#: nothing of its own; a confirmation that restates the request in its own sentence stays well below it
_COPIED_SHARE = 0.6


@dataclass(frozen=True)
class Decision:
    passed: bool
    confidence: float
    rule: str
    why: str = ""


def text_item(item: ChecklistItem, view: TurnView) -> Decision:
    """A positive item on the reply or the reasoning (module docstring)."""
    texts = [t for t in view.texts(item.focus_on) if t]
    if not texts:
        return Decision(False, 0.8, "text:empty", "no text yet")
    said = " ".join(texts)
    if item.focus_on == REPLY:
        said, signal = _own_words(said, view)
        if signal is not None:
            return signal
        missing = _unsupported(item, view)
        if missing:
            return Decision(False, 0.6, "text:unsupported",
                            f"the reference's {missing} call has no successful counterpart in this turn")
    snippets = " ".join(e.snippet for e in item.evidence if e.from_ == item.focus_on)
    decision = _content(item, said, snippets)
    if decision.passed and item.focus_on == REPLY:
        contradiction = _contradiction(said, [snippets, view.reference_reply])
        if contradiction:
            return Decision(False, 0.5, "text:contradiction", f"negates what the reference said: {contradiction!r}")
    return decision


def _own_words(said: str, view: TurnView) -> tuple[str, Decision | None]:
    """The part of the reply that is the assistant's own statement, or a failing decision when the reply takes
    itself back, refuses, or is mostly copied words."""
    prose, raw_share = without_raw_data(said)
    taken_back = retraction(prose)
    if taken_back:
        return prose, Decision(False, 0.6, "text:retracted", f"the reply takes itself back: {taken_back[:80]!r}")
    refused = refusal(prose)
    if refused:
        return prose, Decision(False, 0.6, "text:refusal", f"the reply refuses: {refused[:80]!r}")
    rest, echo_share = without_echo(prose, view.user_texts)
    if echo_share >= _COPIED_SHARE:
        prose = rest
    if raw_share >= _COPIED_SHARE and not words(prose):
        return prose, Decision(False, 0.7, "text:raw-data", "the reply is raw tool output, not an answer")
    return prose, None


def _unsupported(item: ChecklistItem, view: TurnView) -> str | None:
    """A successful reference call of this turn that the item is about and that this transcript has no successful
    counterpart of (its tool, with the values that tie it to the item), or None. Items that ask the assistant
    to ask something are not about an outcome."""
    if _ASKS.search(item.question):
        return None
    about = " ".join([item.question, item.pass_condition, *(e.snippet for e in item.evidence)])
    about_facts, about_words = facts(about), content_words(about) - _GENERIC
    about_prefixes = {w[:3] for w in words(about)}
    done = view.successful_calls
    for name, arguments, response, ok in view.reference_results:
        if not ok:
            continue
        values = _values_text(arguments)
        tied = (facts(values) & about_facts) | (content_words(values) & about_words)
        parts = [p.lower()[:3] for p in re.findall(r"[A-Z][a-z]*|[a-z]+", name) if len(p) > 2]
        by_name = bool(parts) and all(p in about_prefixes for p in parts)
        by_result = bool(facts(response) & about_facts) or len(content_words(response) & about_words) >= 2
        if not (by_name or by_result or tied & about_facts or len(tied) >= 2):
            continue
        counterparts = [facts(_values_text(a)) | content_words(_values_text(a)) for called, a in done if called == name]
        # the same tool, called with (most of) the values that tie the reference call to the item
        if not any(len(tied & values_of) * 2 >= len(tied) for values_of in counterparts):
            return name
    return None


def _values_text(arguments: object) -> str:
    if isinstance(arguments, dict):
        return " ".join(_values_text(v) for v in arguments.values())
    if isinstance(arguments, list):
        return " ".join(_values_text(v) for v in arguments)
    return "" if arguments is None else str(arguments)


def _content(item: ChecklistItem, said: str, snippets: str) -> Decision:
    if _ASKS.search(item.question):
        # a request item is about what is asked: only the sentences that ask count
        said = " ".join(s for s in sentences(said) if _REQUEST.search(s))
        if not said:
            return Decision(False, 0.6, "text:no-request", "the reply asks nothing")
    said_facts = facts(said)
    asked = facts(f"{item.question} {item.pass_condition}")
    # the values the reference text stated and the item asks about; values the pass condition merely allows
    # ("optionally restating September 28") are not required when the reference did not state them either
    shown = facts(snippets) if snippets else asked
    key = shown & asked
    if not key:
        # values the reference happened to state but the item does not ask about: dates, times, e-mails and
        # identifiers still identify what the reply must say; bare numbers (counts, years) are incidental
        key = {f for f in shown if f[0] != "N"} or shown
    if key:
        present = {f for f in key if f in said_facts or (f[0] == "T" and time_variant_present(f, said_facts))}
        share = len(present) / len(key)
        passed = share >= 0.99 or (share >= 0.75 and len(key) >= 4)
        return Decision(passed, 0.7, "text:values", f"{len(present)}/{len(key)} key values present")
    said_stems = content_words(said)
    shares = [len(wanted & said_stems) / len(wanted)
              for wanted in (content_words(item.question) - _GENERIC, content_words(snippets) - _GENERIC)
              if wanted]
    share = max(shares, default=0.0)
    return Decision(share >= 0.4, 0.4, "text:words", f"{share:.0%} of the item's words present")


def _contradiction(said: str, references: list[str]) -> str | None:
    """A reply sentence that makes a statement of the reference texts (the item's evidence, the reference reply)
    with a negated verb where the reference's sentence carries no negation."""
    reference = [s for text in references for s in sentences(text) if s]
    if not reference:
        return None
    for sentence in sentences(said):
        if not negates(sentence, verbal=True):
            continue
        mine_facts, mine_words = facts(sentence), content_words(sentence) - _GENERIC
        best = max(reference, key=lambda r: (len(facts(r) & mine_facts), len(content_words(r) & mine_words)))
        best_words = content_words(best) - _GENERIC
        # the same statement (its facts and most of its words), negated: not merely a negation somewhere nearby
        same = (facts(best) <= mine_facts and len(best_words & mine_words) >= max(2, 0.6 * len(best_words))
                and len(mine_words - best_words) <= max(2, len(best_words) // 2))
        if same and not negates(best):
            return sentence[:120]
    return None


def avoid_statements(item: ChecklistItem, view: TurnView) -> Decision:
    """An "avoid X" item about statements: no fact stated that the conversation does not contain, and (for items
    about claims) no claimed action without a successful call."""
    said = " ".join(t for t in view.texts(item.focus_on) if t)
    ungrounded = {f for f in facts(said) - view.grounded_facts
                  if not (f[0] == "T" and time_variant_present(f, view.grounded_facts))}
    ungrounded = {f for f in ungrounded if not (f[0] == "N" and len(f) <= 2)}  # small counts ("2 emails")
    if ungrounded:
        return Decision(False, 0.6, "avoid:facts", f"facts not in the conversation: {sorted(ungrounded)[:5]}")
    if _CLAIM.search(item.question):
        targeted = view.named_tools(item)
        done = any(ok and (not targeted or name in targeted) for name, _, ok in view.tool_results)
        if not done and _DONE.search(said):
            return Decision(False, 0.5, "avoid:claim", "claims an action without a successful call")
    return Decision(True, 0.5, "avoid:facts", "every stated fact appears in the conversation")
