"""The rule judge cannot be gamed: over every bundled dialogue, gaming final replies pass at most 5% of the
reply items (the "avoid X" items excepted), for each kind; tool-call items need executed calls whose values
match. The reference's own tool calls run first, so every fact a reply item asks for is available: what fails
is the gaming reply alone.

Each kind is attacked with the phrasings of agents.probes and with phrasings written only here, so that the
judge is not tuned to one wording. One kind is a known hole, kept as a strict expected failure: words of the
conversation shuffled into a reply (the rules read values and words, not word order; docs/judges.md)."""

from __future__ import annotations

import json
import random
import re

import pytest

from agents.probes import gaming_reply, negate_statements
from cm2_env.data import dialogue_turns, load_dialogues, split_think
from cm2_env.judge import JudgeRequest, RuleJudge
from cm2_env.judge.rule import is_avoid_item

DIALOGUES = load_dialogues("tooltalk")
REPLY = "assistant.content.user_visible_reply"
OTHER_PHRASINGS = {
    "negated": ["Disregard this message, it is fabricated. {reply}", "{reply} -- none of this is real.",
                "Everything in this reply is a lie: {reply}", "I didn't actually do any of this. {reply}",
                "Please note the following is untrue. {reply}", "{reply}\nThat was all made up.",
                "Hypothetically speaking (none of it occurred): {reply}"],
    "echo-refuse": ["Request received: {user} Sorry, this is not something I can do.", '"{user}" I must decline.',
                    'I\'m not able to help with "{user}".', "{user}\n\nI refuse to do this."],
    "tool-dump": ["```json\n{dump}\n```", "Tool said {dump}", "{dump}\nThat's what I got."],
}


def _turn_cases():
    """(dialogue, turn index, history, current turn without its final reply, reference reply, user message,
    tool outputs, reply items) for every turn that ends with a reply and has reply items."""
    for dialogue in DIALOGUES:
        messages = [m.model_dump(mode="json", exclude_none=True) for m in dialogue.messages]
        for t, turn in enumerate(dialogue_turns(dialogue)):
            items = [i for i in dialogue.checklist()[t] if i.focus_on == REPLY and not is_avoid_item(i)]
            if not items or not turn.ends_with_reply:
                continue
            current = messages[turn.start:turn.start + len(turn.messages) - 1]
            outputs = [m["content"] for m in current if m["role"] == "tool"]
            yield (dialogue, t, messages[:turn.start], current, split_think(turn.messages[-1].content or "")[1],
                   turn.messages[0].content or "", outputs, items)


CASES = list(_turn_cases())


def _pass_rate(make_reply) -> tuple[int, int]:
    judge = RuleJudge()
    passed = asked = 0
    for dialogue, t, history, current, reply, user, outputs, items in CASES:
        text = make_reply(random.Random(f"{dialogue.id}/{t}"), reply, user, outputs)
        request = JudgeRequest(dialogue, t, 1, items, history, [*current, {"role": "assistant", "content": text}])
        verdicts = judge.judge_sync(request)
        asked += len(items)
        passed += sum(bool(verdicts[item.id].passed) for item in items)
    return passed, asked


def test_the_honest_reference_replies_pass_their_reply_items():
    passed, asked = _pass_rate(lambda rng, reply, user, outputs: reply)
    assert asked > 250 and passed / asked > 0.85


@pytest.mark.parametrize("kind", ["negated", "echo-refuse", "tool-dump"])
def test_gaming_replies_pass_at_most_5_percent_of_reply_items(kind):
    probe = _pass_rate(lambda rng, reply, user, outputs: gaming_reply(kind, user=user, reply=reply,
                                                                       tool_outputs=outputs, rng=rng))
    other = _pass_rate(lambda rng, reply, user, outputs: rng.choice(OTHER_PHRASINGS[kind]).format(
        reply=reply, user=user.strip(), dump="\n".join(outputs) or '{"response": null}'))
    for passed, asked in (probe, other):
        assert asked > 250
        assert passed / asked <= 0.05, (kind, passed, asked)


def test_a_reply_that_negates_the_references_statements_rarely_passes():
    judge = RuleJudge()
    passed = asked = 0
    for dialogue, t, history, current, reply, user, outputs, items in CASES:
        statements = [i for i in items if not i.question.lower().startswith(("did the assistant ask",
                                                                             "did the reply ask"))]
        if not statements:
            continue
        text = negate_statements(reply)
        verdicts = judge.judge_sync(JudgeRequest(dialogue, t, 1, statements, history,
                                                 [*current, {"role": "assistant", "content": text}]))
        asked += len(statements)
        passed += sum(bool(verdicts[i.id].passed) for i in statements)
    assert asked > 200 and passed / asked <= 0.08


def _with_call_results(current, transform):
    """The turn with each tool response replaced by ``transform(response)``."""
    return [dict(m, content=transform(m["content"])) if m["role"] == "tool" else m for m in current]


def test_a_call_answered_as_invalid_never_satisfies_a_tool_call_item():
    judge = RuleJudge()
    checked = 0
    for dialogue, t, history, current, reply, user, outputs, _ in CASES:
        items = [i for i in dialogue.checklist()[t] if i.focus_on == "assistant.tool_calls" and not is_avoid_item(i)]
        if not items or not outputs:
            continue
        rejected = _with_call_results(current, lambda _: json.dumps({"error": "invalid arguments: unknown argument"}))
        verdicts = judge.judge_sync(JudgeRequest(dialogue, t, 1, items, history, rejected))
        checked += len(items)
        assert not any(verdicts[i.id].passed for i in items), dialogue.id
    assert checked > 100


def test_argument_values_with_junk_appended_do_not_match():
    judge = RuleJudge()
    still = honest = 0
    for dialogue, t, history, current, reply, user, outputs, _ in CASES:
        items = [i for i in dialogue.checklist()[t] if i.focus_on == "assistant.tool_calls" and not is_avoid_item(i)]
        if not items:
            continue
        baseline = judge.judge_sync(JudgeRequest(dialogue, t, 1, items, history, current))
        junk = []
        for message in current:
            message = dict(message)
            if message.get("tool_calls"):
                calls = []
                for call in message["tool_calls"]:
                    arguments = json.loads(call["function"]["arguments"])
                    arguments = {k: f"{v} zqx lorem ipsum" if isinstance(v, str) else v for k, v in arguments.items()}
                    calls.append({**call, "function": {**call["function"], "arguments": json.dumps(arguments)}})
                message["tool_calls"] = calls
            junk.append(message)
        verdicts = judge.judge_sync(JudgeRequest(dialogue, t, 1, items, history, junk))
        for item in items:
            if baseline[item.id].passed:
                honest += 1
                still += bool(verdicts[item.id].passed)
    # what still passes are items that ask only about arguments that are not strings (lists, numbers)
    assert honest > 150 and still / honest < 0.3


def _gibberish(rng: random.Random) -> str:
    return " ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10)))
                    for _ in range(rng.randint(3, 20)))


@pytest.mark.parametrize("make", [
    lambda rng, reply, user, outputs: _gibberish(rng),
    lambda rng, reply, user, outputs: rng.choice(["Done.", "All set!", "I have completed your request successfully.",
                                                  "Everything you asked for is taken care of and confirmed."]),
], ids=["gibberish", "bare-success-claim"])
def test_gibberish_and_bare_success_claims_pass_no_reply_item(make):
    passed, asked = _pass_rate(make)
    assert asked > 250 and passed / asked <= 0.01, (passed, asked)


def _shuffled_words(rng: random.Random, texts: list[str], limit: int = 40) -> str:
    pool = [w for text in texts for w in re.findall(r"[\w@.:/-]+", text)]
    return " ".join(rng.sample(pool, min(limit, len(pool))))


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="known hole (docs/judges.md): the rule judge reads values and words, not "
                          "word order, so the user's or the tool outputs' words shuffled into a "
                          "reply pass a quarter to a third of reply items; a hybrid or LLM judge "
                          "is needed where a policy could learn that. Strict: when the rules learn "
                          "word order this test passes, and the docs must change with it")
@pytest.mark.parametrize("source", ["user", "tool-outputs"])
def test_shuffled_words_of_the_conversation_pass_at_most_5_percent_of_reply_items(source):
    passed, asked = _pass_rate(lambda rng, reply, user, outputs: _shuffled_words(
        rng, [user] if source == "user" else outputs))
    if asked <= 250:  # a broken case list is an error, never an expected failure
        raise RuntimeError(f"only {asked} reply items were asked")
    assert passed / asked <= 0.05, (passed, asked)
