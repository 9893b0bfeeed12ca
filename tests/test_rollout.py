"""The rollout engine and `cm2 rollout`: groups of concurrent episodes, run directories, summaries."""

import asyncio
import json

import pytest
from click.testing import CliRunner

from agents import ReplayAgent
from agents.rollout import run_rollouts, summarize
from cm2_env.cli import main as cm2
from cm2_env.data import load_dialogues


@pytest.fixture(scope="module")
def tooltalk():
    return load_dialogues("tooltalk")


def test_groups_run_every_dialogue_g_times_in_order_and_write_a_run_directory(tooltalk, tmp_path):
    dialogues = tooltalk[:4]
    results = run_rollouts(dialogues, ReplayAgent(dialogues), group_size=3, out_dir=tmp_path, progress=False)
    assert [(r.dialogue_id, r.group_index) for r in results] == [(d.id, g) for d in dialogues for g in range(3)]
    for result in results:
        assert not result.failed
        assert abs(result.R - result.reward_record["R"]) < 1e-9
        assert len(result.steps) == len(result.rewards)
    # Replay simulator + rule judge + replay agent are deterministic: a group's members agree.
    for d in range(4):
        assert len({round(r.R, 12) for r in results[3 * d: 3 * d + 3]}) == 1
    lines = (tmp_path / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == 12
    first = json.loads(lines[0])
    assert first["dialogue_id"] == dialogues[0].id and first["actions"] and first["messages"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["episodes"] == 12 and summary["failed"] == 0


def test_the_summary_counts_items_by_focus_and_early_terminations(tooltalk):
    results = run_rollouts(tooltalk, ReplayAgent(tooltalk), progress=False)
    summary = summarize(results, tooltalk)
    assert summary["episodes"] == 78
    judged = sum(row["judged"] for row in summary["items_passed_by_focus"].values())
    reached_items = sum(len(tooltalk_by_id[r.dialogue_id].checklist()[t])
                        for tooltalk_by_id in [{d.id: d for d in tooltalk}]
                        for r in results for t in range(r.turns_reached))
    assert judged == reached_items
    assert summary["ended_early"] == sum(r.ended_early for r in results)
    assert 0.5 < summary["mean_reward"] <= 1.0


def test_rollout_cli_prints_a_table_and_a_json_last_line(tmp_path):
    result = CliRunner().invoke(cm2, ["rollout", "--agent", "replay", "--limit", "3", "--group-size", "2",
                                      "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    last = json.loads(result.output.strip().splitlines()[-1])
    assert last["episodes"] == 6 and 0 <= last["mean_reward"] <= 1
    assert "mean reward" in result.output
    assert (tmp_path / "run" / "trajectories.jsonl").exists()


def test_endpoint_agent_episodes_complete_against_a_scripted_server(tooltalk):
    from agents import EndpointAgent
    from tests.support.scripted_server import ScriptedServer

    with ScriptedServer(lambda request: "All done.", latency_s=0.2) as server:
        agent = EndpointAgent(server.spec, temperature=0.0)
        results = run_rollouts(tooltalk[:8], agent, group_size=2, progress=False)
        requests = len(server.requests)
    assert len(results) == 16 and not any(r.failed for r in results)
    # A final reply that satisfies nothing ends each episode after its first turn (strictness): one request each.
    assert requests == 16
    assert all(r.steps[0].text == "All done." for r in results)


def test_endpoint_agent_sends_answers_to_malformed_calls_as_user_messages(tooltalk):
    from agents import EndpointAgent
    from cm2_env.env import CM2ToolUseEnv
    from tests.support.scripted_server import ScriptedServer

    with ScriptedServer(lambda request: "Sorry.") as server:
        env = CM2ToolUseEnv(dataset=tooltalk[:1])
        _, info = env.reset(options={"dialogue_id": tooltalk[0].id})
        _, _, _, _, info = env.step("<tool_call>{not json</tool_call>")
        assert info["messages"][-1]["role"] == "tool"  # the env answers the malformed call
        agent = EndpointAgent(server.spec)
        asyncio.run(agent.act(info["messages"], info["tools"], context=info))
        sent = server.requests[-1]["messages"]
    assert all(m["role"] != "tool" for m in sent)
    assert sent[-1]["role"] == "user" and sent[-1]["content"].startswith("[tool error]")
    assert len(sent) == len(info["messages"])


def test_backend_options_reach_backends_built_by_the_rollout_engine():
    import json as _json
    import re

    from tests.support.scripted_server import ScriptedServer

    def responder(body):
        ids = re.findall(r"^### Item (\S+)", body["messages"][-1]["content"], re.MULTILINE)
        return _json.dumps({"verdicts": [{"id": i, "answer": False} for i in ids]})

    dialogues = load_dialogues("tooltalk")[:2]
    with ScriptedServer(responder) as server:
        results = run_rollouts(dialogues, ReplayAgent(dialogues), progress=False,
                               env_kwargs={"judge": server.spec, "judge_options": {"batch_items": True}})
        requests = len(server.requests)
    assert requests == sum(len(r.steps) for r in results)  # batched: one request per action, not per item


def test_backends_built_from_specs_are_closed_and_objects_passed_in_are_not():
    import asyncio as _asyncio

    from cm2_env.backends import build_backends
    from cm2_env.judge import make_judge
    from tests.support.scripted_server import ScriptedServer

    with ScriptedServer() as server:
        async def main():
            built = build_backends("replay", server.spec, judge_options={"votes": 3})
            given = make_judge(server.spec)
            passed_in = build_backends("replay", given)
            await given.client.chat([{"role": "user", "content": "x"}])
            await built.judge.client.chat([{"role": "user", "content": "x"}])
            await built.aclose()
            await passed_in.aclose()
            return built, given

        built, given = _asyncio.run(main())
    assert built.judge.votes == 3 and not built.judge.client._pool.endpoints[0].sdks  # closed
    assert given.client._pool.endpoints[0].sdks  # not ours to close
