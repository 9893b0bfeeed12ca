"""Run folders for the `cm2 view` tests: a replay rollout whose transcript carries script payloads."""

from __future__ import annotations

import json

from agents import ReplayAgent
from agents.rollout import run_rollouts
from cm2_env.data import load_dialogues

#: Markup an attacker could put in a tool result or a model reply; none of it may run in the report.
PAYLOADS = ("<script>window.__pwned = 1</script>", '<img src=x onerror="window.__pwned = 2">',
            "</script><script>window.__pwned = 3</script><!--")


def hostile_dataset(tmp_path):
    """The first bundled dialogue with PAYLOADS in its first tool result and its last reply, as a JSONL file."""
    record = load_dialogues("tooltalk")[0].to_record()
    tool = next(m for m in record["messages"] if m["role"] == "tool")
    tool["content"] = json.dumps({"result": PAYLOADS[0]})
    reply = next(m for m in reversed(record["messages"]) if m["role"] == "assistant" and not m.get("tool_calls"))
    reply["content"] = "Done. " + PAYLOADS[1] + PAYLOADS[2]
    path = tmp_path / "hostile.jsonl"
    path.write_text(json.dumps(record) + "\n")
    return path, record["id"]


def hostile_run(tmp_path):
    """A replay rollout whose transcript carries script payloads in a tool result and in a reply."""
    path, _ = hostile_dataset(tmp_path)
    dialogues = load_dialogues(str(path))
    out = tmp_path / "hostile"
    run_rollouts(dialogues, ReplayAgent(dialogues), out_dir=out, progress=False, env_kwargs={"strict": False})
    manifest = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**manifest, "dataset": str(path)}))
    return out
