"""Reliability under faults and bad input: nothing lost, nothing stalls, every error is one clear line."""

from __future__ import annotations

import asyncio
import json

import gymnasium as gym
import pytest
from click.testing import CliRunner

import cm2_env  # noqa: F401  (registers CM2ToolUse-v0)
from cm2_env.cli import main
from cm2_env.data import load_dialogues

DIALOGUES = load_dialogues("tooltalk")
# A stall (30 s, tests/support/role_server.py) outlasts the timeout by far, and the timeout is long enough that
# an answer delayed by a busy machine is not taken for a stall; the circuit breaker (tested on its own below) is
# kept out of the way, so that machine load cannot turn slow answers into failed episodes.
FAST_RETRIES = {"max_retries": 6, "timeout_s": 8.0, "backoff_base_s": 0.01, "breaker_failures": 1_000_000}


# -- faults of the LLM servers: nothing lost, resume completes, results as without faults ----------------------


def _rollouts(spec, out, dialogues, resume=False):
    from agents import EndpointAgent
    from agents.rollout import run_rollouts
    from cm2_env.judge import make_judge
    from cm2_env.simulator import make_simulator

    agent = EndpointAgent(spec, client_options=FAST_RETRIES)
    env_kwargs = {"simulator": make_simulator(spec, llm_options=FAST_RETRIES),
                  "judge": make_judge(spec, batch_items=True, llm_options=FAST_RETRIES)}
    results = run_rollouts(dialogues, agent, group_size=2, out_dir=out, resume=resume, env_kwargs=env_kwargs,
                           progress=False, seed=3)
    return results, agent.client.usage()["policy"]["requests"]


def _on_disk(out):
    return [json.loads(line) for line in (out / "trajectories.jsonl").read_text().splitlines()]


def test_faulty_servers_killed_mid_run_lose_no_finished_episode_and_resume_matches_a_clean_run(tmp_path):
    from tests.support.role_server import start_role_server

    dialogues = DIALOGUES[:6]
    clean_spec, clean_process, clean_stop = start_role_server()
    try:
        reference, policy_requests = _rollouts(clean_spec, tmp_path / "clean", dialogues)
        assert not any(r.failed for r in reference)
        # 30% of the requests fail once (500, 429, garbage, empty, stall); the server dies half-way through
        faulty_spec, faulty_process, _ = start_role_server(fault_rate=0.3, die_after=policy_requests)
        first, _ = _rollouts(faulty_spec, tmp_path / "run", dialogues)
        faulty_process.join(timeout=30)
        assert faulty_process.exitcode == 1  # it really died mid-run
        ok = {(r.dialogue_id, r.group_index) for r in first if not r.failed}
        assert ok and len(ok) < len(first)
        written = {(e["dialogue_id"], e["group_index"]) for e in _on_disk(tmp_path / "run") if not e["failed"]}
        assert written == ok  # every episode that finished before the kill is on disk
        resumed, _ = _rollouts(clean_spec, tmp_path / "run", dialogues, resume=True)
    finally:
        clean_stop.set()
        clean_process.join(timeout=30)
    assert not any(r.failed for r in resumed)
    by_key = {(r.dialogue_id, r.group_index): r for r in reference}
    assert [(r.dialogue_id, r.group_index) for r in resumed] == list(by_key)
    assert [r.R for r in resumed] == [by_key[(r.dialogue_id, r.group_index)].R for r in resumed]
    assert [r.verdicts for r in resumed] == [by_key[(r.dialogue_id, r.group_index)].verdicts for r in resumed]
    on_disk = _on_disk(tmp_path / "run")
    assert sorted((e["dialogue_id"], e["group_index"]) for e in on_disk) == sorted(by_key)  # failed ones replaced
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["failed"] == 0


def test_a_dead_endpoint_opens_the_circuit_and_calls_fail_fast():
    import socket

    from cm2_env.llm import LLMConnectionError, make_client

    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(f"openai:http://127.0.0.1:{port}/v1#m", role="judge", max_retries=4,
                         backoff_base_s=0.01, timeout_s=2)

    async def main_():
        return await asyncio.gather(*(client.chat([{"role": "user", "content": str(i)}]) for i in range(40)),
                                    return_exceptions=True)

    outcomes = asyncio.run(main_())
    assert all(isinstance(o, LLMConnectionError) for o in outcomes)
    usage = client.usage()["judge"]
    assert usage["failures"] == 40 and usage["circuit_open"] >= 1
    assert usage["requests"] < 40 * 5 / 2  # far fewer than 40 full retry schedules
    assert any("circuit open" in str(o) for o in outcomes)


def test_an_llm_simulator_answer_that_breaks_the_contract_fails_the_call_and_is_counted():
    from cm2_env.simulator import make_simulator
    from tests.support.scripted_server import ScriptedServer

    dialogue = DIALOGUES[0]
    with ScriptedServer() as server:  # echoes the prompt: its first JSON object is a few-shot example's arguments
        simulator = make_simulator(server.spec, attempts=2, llm_options={"max_retries": 0})
        episode = simulator.start_episode(dialogue)
        result = asyncio.run(episode.execute("QueryCalendar", {"start_time": "2030-01-01 00:00:00",
                                                               "end_time": "2030-01-02 00:00:00"}, turn=3))
    assert result.source == "failed" and "execution_result" in result.content
    assert episode.usage()["bad_answers"] == 2


# -- records are never lost to their encoding ---------------------------------------------------------------


def test_a_lone_surrogate_in_a_dataset_is_reported_by_validate_and_never_loses_a_record(tmp_path):
    from agents import ReplayAgent
    from agents.rollout import run_rollouts

    record = DIALOGUES[0].to_record()
    record["messages"][1]["content"] += "\ud800"
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")  # ASCII-escaped: valid JSON
    result = CliRunner().invoke(main, ["data", "validate", str(path)])
    assert result.exit_code == 1 and "lone surrogate" in result.output and "messages.1.content" in result.output
    dialogues = load_dialogues(str(path))
    results = run_rollouts(dialogues, ReplayAgent(dialogues), out_dir=tmp_path / "run", progress=False)
    lines = (tmp_path / "run" / "trajectories.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(results) == 1 and "\\ud800" in lines[0]
    assert json.loads(lines[0])["dialogue_id"] == record["id"]
    assert (tmp_path / "run" / "summary.json").exists()


# -- a run folder is never overwritten silently; resume keeps its settings ----------------------------------


def test_rollout_into_an_occupied_folder_needs_resume_or_overwrite_and_resume_keeps_the_settings(tmp_path):
    out = str(tmp_path / "run")
    runner = CliRunner()
    assert runner.invoke(main, ["rollout", "--limit", "2", "--out", out]).exit_code == 0
    again = runner.invoke(main, ["rollout", "--limit", "2", "--out", out])
    assert again.exit_code == 2 and "--resume" in again.output and "--overwrite" in again.output
    assert "Traceback" not in again.output
    other = runner.invoke(main, ["rollout", "--limit", "2", "--out", out, "--resume", "--seed", "9"])
    assert other.exit_code == 2 and "seed" in other.output
    resumed = runner.invoke(main, ["rollout", "--limit", "2", "--out", out, "--resume", "--json"])
    assert resumed.exit_code == 0 and json.loads(resumed.output.strip().splitlines()[-1])["episodes"] == 2
    assert runner.invoke(main, ["rollout", "--limit", "1", "--out", out, "--overwrite"]).exit_code == 0
    assert len((tmp_path / "run" / "trajectories.jsonl").read_text().splitlines()) == 1


def test_the_rollout_summary_counts_llm_calls_per_role(tmp_path):
    from tests.support.scripted_server import ScriptedServer

    def responder(body):
        if "careful judge" in body["messages"][0]["content"]:
            return json.dumps({"verdicts": [], "answer": True})
        return "Could you tell me more?"

    with ScriptedServer(responder) as server:
        result = CliRunner().invoke(main, ["rollout", "--limit", "2", "--agent", server.spec, "--judge",
                                           server.spec, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["llm"]["policy"]["calls"] == summary["usage"]["actions"] > 0
    assert summary["llm"]["judge"]["calls"] == summary["usage"]["judged_items"] > 0  # one call per item
    assert "LLM calls: judge" in result.output


def test_reward_compute_rejects_weights_that_would_put_R_outside_0_1(tmp_path):
    group = {"turns": [{"items": [{"id": "C0", "weight": 1e308}, {"id": "C1", "weight": 1e308}]}],
             "rollouts": [{"failed": False, "turns": [{"steps": 1, "first_satisfied": {"C0": 1, "C1": 1}}]}]}
    path = tmp_path / "groups.jsonl"
    path.write_text(json.dumps(group) + "\n")
    result = CliRunner().invoke(main, ["reward", "compute", str(path)])
    assert result.exit_code != 0 and "weights sum to inf" in result.output and "Infinity" not in result.output


# -- bad input: one clear line, exit status 2, no traceback -----------------------------------------------


@pytest.mark.parametrize("args, expected", [
    (["rollout", "--agent", "gpt-4", "--limit", "1"], "policy spec 'gpt-4' is not understood"),
    (["rollout", "--agent", "hf:/nonexistent", "--limit", "1"], "not a local model folder"),
    (["rollout", "--dataset", "/no/such.jsonl"], "no such file"),
    (["rollout", "--judge", "bogus", "--limit", "1"], "Fix: use 'rule'"),
    (["rollout", "--simulator", "bogus", "--limit", "1"], "Fix: use 'replay'"),
    (["rollout", "--agent", "openai:http://127.0.0.1:9/v1", "--limit", "1"], "no model name"),
    (["judge", "eval", "--limit", "0"], "--limit"),
    (["judge", "eval", "--concurrency", "0"], "--concurrency"),
])
def test_bad_command_line_input_gets_one_line_and_exit_status_2(args, expected):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert expected in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("content, expected", [(b"\x89PNG\x00\x01\x02", "not UTF-8 text"), (b"", "no records")])
def test_data_validate_rejects_binary_and_empty_files(tmp_path, content, expected):
    path = tmp_path / "file.jsonl"
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["data", "validate", str(path)])
    assert result.exit_code != 0 and expected in result.output and "Traceback" not in result.output
    folder = CliRunner().invoke(main, ["data", "validate", str(tmp_path)])
    assert folder.exit_code == 2 and "is a folder" in folder.output


@pytest.mark.parametrize("content, expected", [(b"\x89PNG\x00\x01\x02", "not UTF-8 text"), (b"", "no groups")])
def test_reward_compute_rejects_binary_and_empty_files(tmp_path, content, expected):
    path = tmp_path / "file.jsonl"
    path.write_bytes(content)
    result = CliRunner().invoke(main, ["reward", "compute", str(path)])
    assert result.exit_code == 2 and expected in result.output


def test_debug_shows_the_traceback():
    result = CliRunner().invoke(main, ["--debug", "rollout", "--judge", "bogus", "--limit", "1"])
    assert isinstance(result.exception, ValueError)


def test_a_spec_carrying_a_secret_is_rejected_without_printing_the_secret():
    for spec in ("openai:http://user:SECRET123@127.0.0.1:8000/v1#m", "openai:http://127.0.0.1:8000/v1#m?api_key=SECRET123"):
        result = CliRunner().invoke(main, ["rollout", "--judge", spec, "--limit", "1"])
        assert result.exit_code == 2 and "SECRET123" not in result.output and "***" in result.output


@pytest.mark.parametrize("kwargs, expected", [
    ({"judge": None}, r"judge must be a spec string \('rule'"),
    ({"judge": 42}, r"judge must be a spec string \('rule'"),
    ({"simulator": None}, r"simulator must be a spec string \('replay'"),
    ({"strict": "no"}, "strict must be True or False"),
    ({"dataset": ""}, "dataset is empty"),
])
def test_the_env_rejects_bad_construction_arguments_naming_the_valid_choices(kwargs, expected):
    with pytest.raises((TypeError, ValueError), match=expected):
        gym.make("CM2ToolUse-v0", **kwargs)


def test_a_none_action_gets_the_same_answer_as_any_other_non_string():
    env = gym.make("CM2ToolUse-v0")
    env.reset(seed=0)
    answers = [json.loads(env.step(action)[4]["messages"][-1]["content"]) for action in (None, 42)]
    assert [a["kind"] for a in answers] == ["not_text", "not_text"]
    assert "got NoneType" in answers[0]["error"] and "got int" in answers[1]["error"]
    env.close()


def test_progress_goes_to_stderr_as_plain_lines_when_stderr_is_not_a_terminal(capsys):
    from cm2_env.progress import progress

    with progress("rollouts", 20) as advance:
        for _ in range(20):
            advance()
    lines = capsys.readouterr().err.splitlines()
    assert lines and lines[-1].startswith("rollouts: 20/20 (100%)") and len(lines) == 10
    assert not any("\x1b[" in line for line in lines)


def test_a_config_file_with_several_mistakes_reports_all_of_them(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: m\nlerning_rate: 1e-4\nsteps: -1\ngroup_size: '8'\nadvantage_level: episode\n")
    result = CliRunner().invoke(main, ["train", "--config", str(path)])
    assert result.exit_code == 2 and "4 problems" in result.output
    for line, field in ((2, "lerning_rate"), (3, "steps"), (4, "group_size"), (5, "advantage_level")):
        assert f"{path}:{line}:" in result.output and field in result.output


def test_training_phases_report_plain_lines_with_their_info_off_a_terminal(capsys):
    from cm2_env.progress import Phases

    with Phases() as phases:
        for step in range(1, 5):
            phases("grpo", step, 4, {"reward": 0.5 + step / 10})
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1].startswith("grpo: 4/4 (100%)  reward 0.9000 in ") and len(lines) == 4


def test_benchmark_progress_reports_categories_errors_and_scores_as_plain_lines(capsys):
    from benchmarks.cli import _BfclProgress

    with _BfclProgress(console=None) as progress:
        progress.update({"event": "category", "category": "multi_turn_base", "total": 2, "todo": 2})
        progress.update({"event": "entry", "id": "multi_turn_base_0"})
        progress.update({"event": "entry", "id": "multi_turn_base_1", "error": "x" * 500})
        progress.update({"event": "scored", "category": "multi_turn_base", "accuracy": 0.5, "total": 2})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and lines[0].startswith("multi_turn_base: 1/2 (50%)")
    assert lines[1].startswith("multi_turn_base: 2/2 (100%)")
    assert lines[2].startswith("multi_turn_base_1: xxx") and lines[2].endswith("characters cut ...]")
    assert lines[3] == "multi_turn_base: 50.00% of 2"


def test_resuming_an_append_only_file_keeps_finished_records_and_cuts_broken_and_failed_ones(tmp_path):
    from cm2_env.records import resume_jsonl

    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b", "failed": true}\n\n{"no_id": 1}\n{"id": "c"}\n{"id": "d", "tr',
                    encoding="utf-8")
    kept = resume_jsonl(path, lambda record: None if record.get("failed") else record["id"])
    assert kept == ["a", "c"]
    assert path.read_text(encoding="utf-8") == '{"id": "a"}\n{"id": "c"}\n'
    assert resume_jsonl(path, lambda record: record["id"]) == ["a", "c"]  # nothing dropped: file untouched
    assert resume_jsonl(tmp_path / "missing.jsonl", lambda record: record) == []


def test_a_record_killed_before_its_newline_is_kept_and_the_next_one_starts_a_new_line(tmp_path):
    from cm2_env.records import resume_jsonl

    path = tmp_path / "out.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}', encoding="utf-8")
    assert resume_jsonl(path, lambda record: record["id"]) == ["a", "b"]
    with path.open("a", encoding="utf-8") as handle:
        handle.write('{"id": "c"}\n')
    assert resume_jsonl(path, lambda record: record["id"]) == ["a", "b", "c"]
