"""Judge calls against the paper's schedule (issue #17): what sticky skipping, batching, caching and the hybrid
judge save, on the same rollouts, with the same verdicts.

The same rollouts -- the replay agent (the reference actions) and a seeded noisy policy (the replay agent with
junk replies, premature replies, perturbed call arguments and malformed calls mixed in) over every bundled
dialogue, replay simulator -- are played through four judges, one after the other in one run, all backed by one
scripted judge server (an OpenAI-compatible server on 127.0.0.1, in its own process, as an external endpoint
would be) that counts the requests and prompt tokens of each judge (by model name):

- **upstream**, the released schedule: after every action one request per item of the turn, satisfied items
  included, no cache (:class:`UpstreamScheduleJudge`, benchmark-only: it asks about every item of the turn
  whatever the environment hands it, and keeps the first action at which each item passed -- the released
  reward's rule). The environment does not call a judge once every item of the turn is satisfied; the actions
  it skipped are asked afterwards from the finished transcripts, in the same timed phase, so the count is the
  full actions x items schedule;
- **ours**: the environment's sticky skip (only items not yet satisfied), one batched request per action
  (``batch_items=True``, opt-in: ``make_judge`` does not batch by default), the judge's answer cache (shared by
  the two policies, as a training group shares prefixes);
- **per_item**: ours without batching -- sticky skip and cache, one request per pending item (what
  ``make_judge`` builds without ``batch_items=True``), to show what batching adds;
- **hybrid**: ours with the rule judge deciding where it is confident (``hybrid:``, threshold 0.85), the LLM
  (the same scripted server) elsewhere.

The scripted judge answers "the same way" whatever the schedule: an item's answer is a function of the item's
text, the current turn's transcript and whether the turn is complete (an "avoid X" item passes when the turn is
complete; any other item passes when most words of each of its evidence snippets appear in the focused part of
the current turn: its tool calls, tool responses or reply), so a per-item prompt and a batched prompt about the
same item and transcript get the same answer. Verdicts are compared as the environment records them: per item,
passed and the first action at which it passed (the upstream reward's rule). ``verdicts_equal`` is true when
every episode's records agree between upstream and ours (and the trajectories are the same); the hybrid judge's
agreement with upstream is reported on its own, as its rules may decide differently from the scripted LLM.

Printed: requests, prompt tokens (whitespace-separated words of the prompt messages, as the scripted server
counts them) and wall time of each schedule, and the ratios to upstream (target: ours <= 40% of the upstream
requests with identical verdicts); the hybrid judge's share of rule-decided verdicts with the precision of the
rule judge's confident verdicts measured on the bundled calibration set (``cm2 judge eval --judge rule``),
recomputed here. Wall times depend on the machine: compare the ratios, not the seconds.

Run from the repository root: ``.venv/bin/python benchmarks/perf/judge_calls.py [--dialogues N] [--json]``
(``--json``: the last line is one JSON object with ``request_ratio`` (ours / upstream), ``verdicts_equal`` and
the other figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import random
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from agents import ReplayAgent  # noqa: E402
from agents.base import AgentStep  # noqa: E402
from agents.rollout import EpisodeResult, arun_rollouts  # noqa: E402
from cm2_env.data import Dialogue, dialogue_turns, load_dialogues  # noqa: E402
from cm2_env.data.turns import split_turns  # noqa: E402
from cm2_env.judge import JudgeRequest, LLMChecklistJudge, RuleJudge, Verdict, make_judge  # noqa: E402
from cm2_env.toolcalls import render_message_hermes  # noqa: E402
from tests.support.scripted_server import ScriptedServer  # noqa: E402

TARGET_REQUEST_RATIO = 0.40
HYBRID_THRESHOLD = 0.85

# --- the scripted judge (runs in the server's process) -------------------------------------------------------

_CURRENT = re.compile(r"## Current turn \(up to the assistant's latest action\)\n(.*?)\n\nThe current turn is "
                      r"(complete|in progress)", re.DOTALL)
_ITEMS = re.compile(r"## Checklist items? to decide\n(.*)", re.DOTALL)
_ITEM_HEAD = re.compile(r"^### Item (\S+)\n", re.MULTILINE)
_BLOCK = re.compile(r"^\[(assistant tool calls|assistant reply|assistant reasoning|tool response[^\]]*|user|system)\]",
                    re.MULTILINE)
_FOCUS_BLOCK = {"assistant.tool_calls": "assistant tool calls", "tool.content": "tool response",
                "assistant.content.user_visible_reply": "assistant reply",
                "assistant.content.thinking": "assistant reasoning"}
_AVOID = re.compile(r"\b(avoid|refrain)", re.IGNORECASE)
_WORD = re.compile(r"[a-z0-9]+")
_COUNTS: dict[str, Counter] = {}
_COUNTS_LOCK = threading.Lock()  # the server answers on one thread per connection


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _blocks(current: str) -> dict[str, str]:
    """The current turn's rendered transcript by block kind ("tool response: X" counts as "tool response")."""
    starts = list(_BLOCK.finditer(current))
    out: dict[str, list[str]] = {}
    for k, match in enumerate(starts):
        end = starts[k + 1].start() if k + 1 < len(starts) else len(current)
        kind = "tool response" if match.group(1).startswith("tool response") else match.group(1)
        out.setdefault(kind, []).append(current[match.end():end])
    return {kind: "\n".join(texts) for kind, texts in out.items()}


def scripted_answer(item_text: str, current: str, complete: bool) -> bool:
    """The scripted judge's answer on one item (see the module docstring): a function of the item, the current
    turn and its state only, so every schedule gets the same answer to the same question."""
    lines = item_text.splitlines()
    question = next((line for line in lines if line.startswith("Question: ")), "")
    if _AVOID.search(question):
        return complete
    blocks = _blocks(current)
    evidence_at = next((k for k, line in enumerate(lines) if line.startswith("Evidence from a reference")), len(lines))
    snippets = [line[2:] for line in lines[evidence_at + 1:] if line.startswith("- ") and line != "- (none)"]
    if not snippets:
        return len(_words(question) & _words(current)) * 2 >= len(_words(question))
    for snippet in snippets:
        focus, _, text = snippet.partition(": ")
        wanted = _words(text)
        seen = _words(blocks.get(_FOCUS_BLOCK.get(focus, ""), "") if focus in _FOCUS_BLOCK else current)
        if wanted and len(wanted & seen) < 0.6 * len(wanted):
            return False
    return True


def respond(request: dict) -> str:
    """Judge prompts (single or batched) get the scripted answers; every request is counted by model name."""
    prompt = request["messages"][-1].get("content") or ""
    tokens = sum(len(str(m.get("content") or "").split()) for m in request["messages"])
    state, items = _CURRENT.search(prompt), _ITEMS.search(prompt)
    if state is None or items is None:
        raise ValueError("not a judge prompt")
    current, complete = state.group(1), state.group(2) == "complete"
    heads = list(_ITEM_HEAD.finditer(items.group(1)))
    answers = []
    for k, head in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(items.group(1))
        answer = scripted_answer(items.group(1)[head.end():end], current, complete)
        answers.append({"id": head.group(1), "evidence_analysis": "scripted", "focus_analysis": "scripted",
                        "pass_analysis": "scripted", "failure_analysis": "scripted", "answer": answer})
    with _COUNTS_LOCK:
        counts = _COUNTS.setdefault(str(request.get("model")), Counter())
        counts.update(requests=1, prompt_tokens=tokens, items=len(answers))
    if '"verdicts"' in prompt:
        return json.dumps({"verdicts": answers})
    if len(answers) != 1:
        raise ValueError(f"a single-item prompt with {len(answers)} items")
    return json.dumps({k: v for k, v in answers[0].items() if k != "id"})


def serve(latency: float, spec_queue: Any, stop_event: Any, stats_queue: Any) -> None:
    """Child process: run the scripted server until told to stop, then hand back the counts per model."""
    with ScriptedServer(respond, latency_s=latency) as server:
        spec_queue.put(server.spec)
        stop_event.wait()
    with _COUNTS_LOCK:
        stats_queue.put({model: dict(counts) for model, counts in _COUNTS.items()})


# --- the judges and the policies ------------------------------------------------------------------------------

class UpstreamScheduleJudge:
    """The released judging schedule (benchmark only): whatever items the environment asks about, every item of
    the turn is asked, one request each (the wrapped judge: per item, no cache); the environment gets the
    verdicts it asked for. ``first_pass`` keeps, per (dialogue id, turn, item id), the first action at which the
    item passed (None: not yet), the released reward's rule; ``asked`` the (dialogue id, turn, action) asked."""

    name = "upstream"

    def __init__(self, llm: LLMChecklistJudge) -> None:
        self.llm = llm
        self.first_pass: dict[tuple[str, int, str], int | None] = {}
        self.asked: set[tuple[str, int, int]] = set()

    async def judge(self, request: JudgeRequest) -> dict[str, Verdict]:
        items = list(request.dialogue.checklist(0)[request.turn])
        ids = {item.id for item in items}
        if any(item.id not in ids for item in request.items):
            raise ValueError("the upstream schedule plays checklist variant 0 only (checklist_variants='first')")
        self.asked.add((request.dialogue.id, request.turn, request.action))
        verdicts = await self.llm.judge(replace(request, items=items))
        for item in items:
            key = (request.dialogue.id, request.turn, item.id)
            first = self.first_pass.get(key)
            if verdicts[item.id].passed and (first is None or request.action < first):
                first = request.action
            self.first_pass[key] = first
        return {item.id: verdicts[item.id] for item in request.items}

    def usage(self) -> dict[str, Any]:
        return self.llm.usage()

    def take(self) -> dict[tuple[str, int, str], int | None]:
        """The first-pass records so far, and a fresh start (for the next policy's rollouts)."""
        records, self.first_pass, self.asked = self.first_pass, {}, set()
        return records

    async def backfill(self, results: list[EpisodeResult], dialogues: Mapping[str, Dialogue]) -> int:
        """Ask, from the finished transcripts, about the actions the environment did not put to the judge (every
        item of the turn was satisfied): the upstream schedule asks after every action. Returns how many actions."""
        missing = []
        for result in results:
            dialogue = dialogues[result.dialogue_id]
            for turn in split_turns(result.messages):
                items = list(dialogue.checklist(0)[turn.index]) if turn.index < len(dialogue.checklist(0)) else []
                for action in turn.actions if items else ():
                    if (dialogue.id, turn.index, action.index) in self.asked:
                        continue
                    end = turn.start + action.step + 1 + len(action.tool_responses)
                    missing.append(JudgeRequest(dialogue, turn.index, action.index, items,
                                                result.messages[:turn.start], result.messages[turn.start:end]))
        await asyncio.gather(*(self.judge(request) for request in missing))
        return len(missing)


_JUNK = ("I'm not sure what you mean. Could you say that again?", "Done! Let me know if there is anything else.",
         "asdf qwerty lorem ipsum", "I have taken care of it.")


class NoisyAgent:
    """The replay agent with seeded mistakes: at each action, with probability ``rate``, a junk reply, the turn's
    final reference reply too early, the reference calls with perturbed arguments, or a malformed call. The draws
    depend on (seed, dialogue, turn, action) only, never on verdicts or timing, so every judge sees the same
    rollouts."""

    def __init__(self, dialogues: list[Dialogue], rate: float = 0.3, seed: int = 0) -> None:
        self.replay = ReplayAgent(dialogues)
        self.turns = {d.id: dialogue_turns(d) for d in dialogues}
        self.rate, self.seed = rate, seed

    async def act(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]],
                  context: Mapping[str, Any] | None = None) -> AgentStep:
        step = await self.replay.act(messages, tools, context)
        assert context is not None
        rng = random.Random(f"{self.seed}:{context['dialogue_id']}:{context['turn']}:{context['action']}")
        if rng.random() >= self.rate:
            return step
        kind = rng.choice(("junk", "early", "perturb", "malformed"))
        calls = step.message.get("tool_calls") or []
        if kind == "early" and calls:
            turns = self.turns[context["dialogue_id"]]
            final = turns[min(int(context["turn"]), len(turns) - 1)].actions[-1].assistant
            return self._step(final.model_dump(mode="json", exclude_none=True))
        if kind == "perturb" and calls:
            return self._step({**step.message, "tool_calls": [_perturbed(call, rng) for call in calls]})
        if kind == "malformed":
            return AgentStep(text='<tool_call>\n{"name": "oops", "arguments": {\n</tool_call>',
                             message={"role": "assistant", "content": ""})
        return self._step({"role": "assistant", "content": rng.choice(_JUNK)})

    @staticmethod
    def _step(message: dict[str, Any]) -> AgentStep:
        return AgentStep(text=render_message_hermes(message), message=message)


def _perturbed(call: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    arguments = call["function"].get("arguments") or "{}"
    arguments = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
    if arguments:
        key = rng.choice(sorted(arguments))
        value = arguments[key]
        arguments[key] = value + 1 if isinstance(value, (int, float)) and not isinstance(value, bool) else \
            f"{value}x" if isinstance(value, str) else value
    return {**call, "function": {**call["function"], "arguments": json.dumps(arguments, ensure_ascii=False)}}


# --- the runs ---------------------------------------------------------------------------------------------------

def records(result: EpisodeResult) -> dict[tuple[int, str], tuple[bool, int | None]]:
    """(turn, item id) -> (passed, first action), as the environment recorded them."""
    return {(t, item_id): (bool(record["passed"]), record["first_action"])
            for t, turn in enumerate(result.verdicts or []) for item_id, record in turn.items()}


async def play(judge: Any, policies: dict[str, Any], dialogues: list[Dialogue], concurrency: int,
               upstream: UpstreamScheduleJudge | None = None) -> dict[str, Any]:
    """Every policy's rollouts through ``judge``; the wall time covers them all (and the upstream backfill)."""
    by_id = {d.id: d for d in dialogues}
    out: dict[str, Any] = {"results": {}, "first_pass": {}, "backfilled": 0}
    start = time.perf_counter()
    for name, agent in policies.items():
        results = await arun_rollouts(dialogues, agent, concurrency=concurrency, progress=False,
                                      env_kwargs={"judge": judge, "simulator": "replay"})
        if upstream is not None:
            out["backfilled"] += await upstream.backfill(results, by_id)
            out["first_pass"][name] = upstream.take()
        out["results"][name] = results
    out["wall_s"] = time.perf_counter() - start
    out["usage"] = judge.usage()
    return out


def compare(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    """Per-item record agreement of two runs over the same policies and dialogues."""
    items = same = episodes = same_episodes = same_messages = 0
    for name, results in left["results"].items():
        for a, b in zip(results, right["results"][name], strict=True):
            ra, rb = records(a), records(b)
            episodes += 1
            same_episodes += ra == rb and a.R == b.R and not a.failed and not b.failed
            same_messages += a.messages == b.messages
            for key in ra.keys() | rb.keys():
                items += 1
                same += ra.get(key) == rb.get(key)
    return {"episodes": episodes, "episodes_equal": same_episodes, "trajectories_equal": same_messages,
            "items": items, "items_equal": same, "agreement": same / items if items else 1.0}


def upstream_consistent(run: dict[str, Any]) -> bool:
    """The environment's records of the upstream run are the first-pass records of the full schedule."""
    for name, results in run["results"].items():
        first_pass = run["first_pass"][name]
        for result in results:
            for (turn, item_id), (passed, first) in records(result).items():
                expected = first_pass.get((result.dialogue_id, turn, item_id))
                if (passed, first) != (expected is not None, expected):
                    return False
    return True


async def calibration_precision(threshold: float) -> dict[str, Any]:
    """The rule judge's confident verdicts (confidence >= threshold) on the bundled calibration set."""
    from cm2_env.judge.calibration import evaluate, load_calibration

    report = await evaluate(RuleJudge(), load_calibration(), load_dialogues("tooltalk"), threshold=threshold)
    confident = report.confident or {}
    return {"threshold": threshold, "precision": confident.get("precision"), "accuracy": confident.get("accuracy"),
            "n": confident.get("n"), "share_to_llm": confident.get("share_below")}


async def measure(spec: str, dialogues: list[Dialogue], args: argparse.Namespace) -> dict[str, Any]:
    base, _, _ = spec.rpartition("#")
    policies = {"replay": ReplayAgent(dialogues), "noisy": NoisyAgent(dialogues, rate=args.noise, seed=args.seed)}
    warmup = make_judge(f"{base}#warmup", batch_items=True)
    await arun_rollouts(dialogues[:2], policies["replay"], progress=False, env_kwargs={"judge": warmup})
    await warmup.aclose()

    upstream = UpstreamScheduleJudge(make_judge(f"{base}#upstream", cache_size=0))
    ours = make_judge(f"{base}#ours", batch_items=True)
    per_item = make_judge(f"{base}#per_item")
    hybrid = make_judge(f"hybrid:{base}#hybrid", batch_items=True, threshold=HYBRID_THRESHOLD)
    runs = {"upstream": await play(upstream, policies, dialogues, args.concurrency, upstream),
            "ours": await play(ours, policies, dialogues, args.concurrency),
            "per_item": await play(per_item, policies, dialogues, args.concurrency),
            "hybrid": await play(hybrid, policies, dialogues, args.concurrency)}
    for judge in (upstream.llm, ours, per_item, hybrid):
        await judge.aclose()
    runs["calibration"] = await calibration_precision(HYBRID_THRESHOLD)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialogues", type=int, default=None, help="the first N bundled dialogues (default: all)")
    parser.add_argument("--latency", type=float, default=0.02, help="the scripted judge's latency per request (s)")
    parser.add_argument("--concurrency", type=int, default=32, help="episodes in flight")
    parser.add_argument("--noise", type=float, default=0.3, help="the noisy policy's share of altered actions")
    parser.add_argument("--seed", type=int, default=0, help="the noisy policy's seed")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    args = parser.parse_args()
    dialogues = load_dialogues("tooltalk")[: args.dialogues]

    context = multiprocessing.get_context("spawn")
    spec_queue, stats_queue, stop = context.Queue(), context.Queue(), context.Event()
    child = context.Process(target=serve, args=(args.latency, spec_queue, stop, stats_queue), daemon=True)
    child.start()
    try:
        runs = asyncio.run(measure(spec_queue.get(timeout=60), dialogues, args))
    finally:
        stop.set()
    server = stats_queue.get(timeout=30)
    child.join(timeout=10)

    rows = {}
    for name in ("upstream", "ours", "per_item", "hybrid"):
        counts = server.get(name, {})
        rows[name] = {"requests": counts.get("requests", 0), "prompt_tokens": counts.get("prompt_tokens", 0),
                      "items_asked": counts.get("items", 0), "wall_s": round(runs[name]["wall_s"], 3),
                      "client_llm_calls": runs[name]["usage"].get("llm_calls", 0)}
    up = rows["upstream"]

    def ratio(name: str, key: str) -> float:
        return rows[name][key] / up[key] if up[key] else float("nan")

    ours_vs_up = compare(runs["upstream"], runs["ours"])
    per_item_vs_up = compare(runs["upstream"], runs["per_item"])
    hybrid_vs_up = compare(runs["upstream"], runs["hybrid"])
    failed = sum(r.failed for name in ("upstream", "ours", "per_item", "hybrid")
                 for results in runs[name]["results"].values() for r in results)
    consistent = upstream_consistent(runs["upstream"])
    verdicts_equal = (failed == 0 and consistent and ours_vs_up["episodes_equal"] == ours_vs_up["episodes"]
                      and ours_vs_up["trajectories_equal"] == ours_vs_up["episodes"])
    hybrid_usage = runs["hybrid"]["usage"]
    decided = hybrid_usage.get("rule_items", 0) + hybrid_usage.get("llm_items", 0)
    rule_share = hybrid_usage.get("rule_items", 0) / decided if decided else 0.0
    calibration = runs["calibration"]
    figures = {
        "dialogues": len(dialogues), "policies": ["replay", f"noisy({args.noise})"], "latency_s": args.latency,
        "episodes": ours_vs_up["episodes"], "failed_episodes": failed,
        "request_ratio": round(ratio("ours", "requests"), 4),
        "prompt_token_ratio": round(ratio("ours", "prompt_tokens"), 4),
        "wall_ratio": round(ratio("ours", "wall_s"), 4),
        "verdicts_equal": verdicts_equal,
        "target_request_ratio": TARGET_REQUEST_RATIO,
        "target_met": verdicts_equal and ratio("ours", "requests") <= TARGET_REQUEST_RATIO,
        "per_item_request_ratio": round(ratio("per_item", "requests"), 4),
        "per_item_verdicts_equal": per_item_vs_up["episodes_equal"] == per_item_vs_up["episodes"],
        "hybrid_request_ratio": round(ratio("hybrid", "requests"), 4),
        "hybrid_prompt_token_ratio": round(ratio("hybrid", "prompt_tokens"), 4),
        "hybrid_wall_ratio": round(ratio("hybrid", "wall_s"), 4),
        "hybrid_rule_share": round(rule_share, 4),
        "hybrid_verdict_agreement": round(hybrid_vs_up["agreement"], 4),
        "hybrid_episodes_equal": hybrid_vs_up["episodes_equal"],
        "calibration": calibration,
        "upstream_records_consistent": consistent,
        "upstream_backfilled_actions": runs["upstream"]["backfilled"],
        "ours_cache_hits": runs["ours"]["usage"].get("cache_hits", 0),
        "mean_R": {name: round(sum(r.R or 0.0 for r in results) / max(1, len(results)), 4)
                   for name, results in runs["upstream"]["results"].items()},
        "rows": rows,
        "counts_consistent": all(row["requests"] == row["client_llm_calls"] for row in rows.values()),
    }

    print(f"dialogues: {len(dialogues)}  policies: replay + noisy (rate {args.noise})  episodes per judge: "
          f"{ours_vs_up['episodes']}  scripted judge latency: {args.latency * 1000:.0f} ms  "
          f"concurrency: {args.concurrency}")
    print(f"{'schedule':<10} {'requests':>9} {'items asked':>12} {'prompt tokens':>14} {'wall s':>8}   "
          f"{'req ratio':>9} {'tok ratio':>9} {'wall ratio':>10}")
    for name, row in rows.items():
        print(f"{name:<10} {row['requests']:>9} {row['items_asked']:>12} {row['prompt_tokens']:>14} "
              f"{row['wall_s']:>8.2f}   {ratio(name, 'requests'):>9.3f} {ratio(name, 'prompt_tokens'):>9.3f} "
              f"{ratio(name, 'wall_s'):>10.3f}")
    print("mean R (upstream judge): " + ", ".join(f"{name} {value:.3f}" for name, value in figures["mean_R"].items()))
    print(f"upstream: {runs['upstream']['backfilled']} actions the env skipped (all items satisfied) asked from "
          f"the transcripts; env records = first-pass records of the full schedule: {consistent}")
    print(f"ours vs upstream: {ours_vs_up['items_equal']}/{ours_vs_up['items']} item records equal, "
          f"{ours_vs_up['episodes_equal']}/{ours_vs_up['episodes']} episodes (records and R), "
          f"{ours_vs_up['trajectories_equal']} identical trajectories, {failed} failed episodes; "
          f"answer-cache hits {figures['ours_cache_hits']}")
    print(f"per_item vs upstream: {per_item_vs_up['episodes_equal']}/{per_item_vs_up['episodes']} episodes equal "
          f"(records and R); batching turns {rows['per_item']['requests']} requests into {rows['ours']['requests']}")
    print(f"verdicts_equal: {verdicts_equal}   request ratio ours/upstream: {figures['request_ratio']:.3f} "
          f"(target <= {TARGET_REQUEST_RATIO:.2f}: {'met' if figures['target_met'] else 'NOT met'})")
    print(f"hybrid: rules decided {rule_share:.1%} of {decided} item verdicts (threshold {HYBRID_THRESHOLD}; "
          f"calibration set: confident rule verdicts n={calibration['n']}, precision of pass "
          f"{calibration['precision']:.3f}, accuracy {calibration['accuracy']:.3f}, "
          f"{calibration['share_to_llm']:.1%} of verdicts left to the LLM); "
          f"agreement with upstream {hybrid_vs_up['items_equal']}/{hybrid_vs_up['items']} item records "
          f"({hybrid_vs_up['agreement']:.1%}), {hybrid_vs_up['episodes_equal']}/{hybrid_vs_up['episodes']} episodes")
    if not figures["counts_consistent"]:
        print("warning: the server's request counts differ from the judges' own (retries?)")
    if args.json:
        print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
