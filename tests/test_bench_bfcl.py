"""BFCL v4 adapter: any policy through BFCL's own multi-turn loop and checker (benchmarks/bfcl*.py).

Every run below goes through the real worker subprocess, BFCL's handler loop and BFCL's checker (bfcl-eval
2026.3.23, minimal install). Each worker run takes a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("bfcl_eval", reason="bfcl-eval is not installed (pip install --no-deps bfcl-eval==2026.3.23)")

from benchmarks.bfcl import (  # noqa: E402
    MULTI_TURN_CATEGORIES, TABLE_COLUMNS, BfclError, BfclOptions, BfclReport, parse_categories,
    parse_policy, run_bfcl, run_bfcl_sequence,
)
from benchmarks.bfcl_policies import call_arguments, parse_python_call  # noqa: E402
from benchmarks.cli import bench  # noqa: E402
from cm2_env.errors import SpecError  # noqa: E402

BFCL_PACKAGE = Path(importlib.util.find_spec("bfcl_eval").submodule_search_locations[0])
SITE_PACKAGES = BFCL_PACKAGE.parent
MUTATING_AGENT = "tests.support.bfcl_agents:make_state_mutating_agent"


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _site_packages_outputs() -> dict[str, float | None]:
    """What BFCL writes when BFCL_PROJECT_ROOT is not set: result/, score/, .file_locks/ next to the package."""
    return {name: (SITE_PACKAGES / name).stat().st_mtime if (SITE_PACKAGES / name).exists() else None
            for name in ("result", "score", ".file_locks")}


@pytest.fixture(scope="module")
def oracle_cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bfcl") / "oracle"
    before = _site_packages_outputs()
    result = CliRunner().invoke(
        bench, ["bfcl", "--policy", "oracle", "--categories", "multi_turn", "--limit", "3", "--out", str(out), "--json"]
    )
    return out, result, before, _site_packages_outputs()


# ---------------------------------------------------------------------------- acceptance through the real loop


def test_oracle_scores_100_on_every_multi_turn_category_through_bfcls_loop_and_checker(oracle_cli_run):
    out, result, _, _ = oracle_cli_run
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for category in MULTI_TURN_CATEGORIES:
        assert summary[category] == 100.0
        assert summary["categories"][category] == {"accuracy": 100.0, "correct": 3, "total": 3}
    assert summary["multi_turn_overall"] == 100.0
    assert summary["multi_turn_overall_complete"] is True
    # the numbers come from BFCL's own score files
    header = _json_lines(out / "score" / "cm2-oracle-FC" / "multi_turn" / "BFCL_v4_multi_turn_base_score.json")[0]
    assert header == {"accuracy": 1.0, "correct_count": 3, "total_count": 3}


def test_the_report_is_stamped_and_laid_out_like_table_3_of_the_paper(oracle_cli_run):
    out, _, _, _ = oracle_cli_run
    report = json.loads((out / "bfcl_results.json").read_text())
    assert report["bfcl_eval_version"] == "2026.3.23"
    assert report["policy"] == "oracle" and report["mode"] == "fc" and report["date"].startswith("20")
    table = (out / "bfcl_results.md").read_text()
    assert "bfcl-eval 2026.3.23" in table and "policy `oracle`" in table
    assert ("| Policy | MT Base | MT Miss Func | MT Miss Param | MT Long Ctx | MT Overall | WS Base | WS No Snippet"
            " | WS Overall |") in table
    assert "| oracle | 100.00 | 100.00 | 100.00 | 100.00 | 100.00 | n/a | n/a | n/a |" in table


def test_bfcl_writes_only_into_the_run_directory_not_into_site_packages(oracle_cli_run):
    out, _, before, after = oracle_cli_run
    assert before == after
    assert (out / ".file_locks").is_dir()  # created by BFCL at import under BFCL_PROJECT_ROOT
    assert len(_json_lines(out / "result" / "cm2-oracle-FC" / "multi_turn"
                           / "BFCL_v4_multi_turn_long_context_result.json")) == 3


def test_noop_scores_zero_on_every_multi_turn_category(tmp_path):
    report = run_bfcl(BfclOptions(policy="noop", out=tmp_path, categories=list(MULTI_TURN_CATEGORIES), limit=2))
    assert {category: row["accuracy"] for category, row in report.categories.items()} == dict.fromkeys(
        MULTI_TURN_CATEGORIES, 0.0)
    assert report.to_json()["multi_turn_overall"] == 0.0


def test_oracle_in_prompting_mode_scores_100(tmp_path):
    report = run_bfcl(BfclOptions(policy="oracle", out=tmp_path, categories=["multi_turn_base", "multi_turn_miss_func"],
                                  limit=2, mode="prompting"))
    assert report.model_name == "cm2-oracle"
    assert report.to_json()["multi_turn_overall"] == 100.0


def _wrong_then_oracle(tmp_path: Path, clear: bool) -> list[BfclReport]:
    common = dict(categories=["multi_turn_base"], limit=3, name="same-name-FC", clear_instance_cache=clear)
    return run_bfcl_sequence([BfclOptions(policy=MUTATING_AGENT, out=tmp_path / "wrong", **common),
                              BfclOptions(policy="oracle", out=tmp_path / "oracle", **common)])


def test_oracle_after_a_wrong_run_under_the_same_name_in_one_process_still_scores_100(tmp_path):
    wrong, oracle = _wrong_then_oracle(tmp_path, clear=True)
    assert wrong.categories["multi_turn_base"]["accuracy"] == 0.0
    assert oracle.categories["multi_turn_base"]["accuracy"] == 100.0


def test_without_clearing_bfcls_instance_cache_the_same_sequence_fails(tmp_path):
    # The pitfall the adapter guards against (docs/benchmarks.md): proves the test above can fail.
    _, oracle = _wrong_then_oracle(tmp_path, clear=False)
    assert oracle.categories["multi_turn_base"]["accuracy"] < 100.0


# ---------------------------------------------------------------------------- resumability


def test_a_rerun_in_the_same_directory_keeps_finished_entries_and_runs_only_the_new_ones(tmp_path):
    options = BfclOptions(policy="oracle", out=tmp_path, categories=["multi_turn_base"], limit=2)
    run_bfcl(options)
    result_path = tmp_path / "result" / "cm2-oracle-FC" / "multi_turn" / "BFCL_v4_multi_turn_base_result.json"
    first_lines = result_path.read_text().splitlines()
    events: list[dict] = []
    options.limit = 3
    report = run_bfcl(options, on_event=events.append)
    assert [event for event in events if event["event"] == "category"][0]["todo"] == 1
    assert [event["id"] for event in events if event["event"] == "entry"] == ["multi_turn_base_2"]
    assert result_path.read_text().splitlines()[:2] == first_lines
    assert report.categories["multi_turn_base"] == {"accuracy": 100.0, "correct": 3, "total": 3}


def test_entries_that_failed_during_inference_are_run_again_on_resume(tmp_path, monkeypatch):
    options = BfclOptions(policy="tests.support.bfcl_agents:FlakyAgent", out=tmp_path,
                          categories=["multi_turn_miss_param"], limit=2)
    monkeypatch.setenv("CM2_TEST_BFCL_FAIL", "1")
    events: list[dict] = []
    run_bfcl(options, on_event=events.append)
    assert all("scripted outage" in event["error"] for event in events if event["event"] == "entry")
    monkeypatch.delenv("CM2_TEST_BFCL_FAIL")
    events.clear()
    run_bfcl(options, on_event=events.append)
    assert [event["todo"] for event in events if event["event"] == "category"] == [2]
    result_path = tmp_path / "result" / "cm2-FlakyAgent-FC" / "multi_turn" / "BFCL_v4_multi_turn_miss_param_result.json"
    assert not any(isinstance(record["result"], str) for record in _json_lines(result_path))


def test_resuming_a_directory_with_another_policy_is_refused_with_a_clear_error(tmp_path):
    run_bfcl(BfclOptions(policy="noop", out=tmp_path, categories=["multi_turn_base"], limit=1))
    with pytest.raises(BfclError, match="different policy.*another --out"):
        run_bfcl(BfclOptions(policy="oracle", out=tmp_path, categories=["multi_turn_base"], limit=1))


# ---------------------------------------------------------------------------- web search, endpoints, errors


def test_web_search_is_skipped_with_a_clear_message_without_a_serpapi_key(tmp_path, monkeypatch):
    monkeypatch.delenv("SERPAPI_API_KEY", raising=False)
    result = CliRunner().invoke(bench, ["bfcl", "--policy", "oracle", "--categories", "web_search,multi_turn_base",
                                        "--limit", "1", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    assert "web_search skipped" in result.stderr and "SERPAPI_API_KEY" in result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["web_search_overall"] is None and set(summary["skipped"]) == {"web_search_base",
                                                                                   "web_search_no_snippet"}
    assert summary["multi_turn_base"] == 100.0
    assert "web_search skipped" in (tmp_path / "bfcl_results.md").read_text()


def test_an_endpoint_policy_talks_to_an_openai_compatible_server_through_bfcls_loop(tmp_path):
    scripted = pytest.importorskip("tests.support.scripted_server")

    def responder(request: dict) -> dict | str:
        if request["messages"][-1]["role"] == "user":  # first step of a turn: one call, then stop
            return {"content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "pwd", "arguments": "{}"}}]}
        return "Done."

    with scripted.ScriptedServer(responder) as server:
        events: list[dict] = []
        report = run_bfcl(BfclOptions(policy=server.spec, out=tmp_path, categories=["multi_turn_base"], limit=1,
                                      concurrency=2), on_event=events.append)
    assert report.model_name == "cm2-scripted-FC"
    assert not any(event.get("error") for event in events)
    first = server.requests[0]
    assert {"cd", "pwd", "mkdir"} <= {tool["function"]["name"] for tool in first["tools"]}
    tool_messages = [m for request in server.requests for m in request["messages"] if m["role"] == "tool"]
    assert tool_messages and "current_working_directory" in tool_messages[0]["content"]  # BFCL executed pwd
    assert report.categories["multi_turn_base"]["total"] == 1


def test_an_agent_path_that_names_no_agent_fails_with_a_message_saying_so(tmp_path):
    with pytest.raises(BfclError, match="is not an agent"):
        run_bfcl(BfclOptions(policy="string:digits", out=tmp_path, categories=["multi_turn_base"], limit=1))
    with pytest.raises(BfclError, match="cannot load the agent"):
        run_bfcl(BfclOptions(policy="no_such_module_xyz:agent", out=tmp_path / "b", categories=["multi_turn_base"],
                             limit=1))


# ---------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("text, kind, value", [
    ("oracle", "oracle", ""), ("noop", "noop", ""),
    ("openai:http://127.0.0.1:8000/v1#qwen3", "endpoint", "openai:http://127.0.0.1:8000/v1#qwen3"),
    ("vllm:http://127.0.0.1:8000/v1#qwen3", "endpoint", "vllm:http://127.0.0.1:8000/v1#qwen3"),
    ("hf:runs/x/final", "hf", "runs/x/final"),
    ("my_pkg.agents:make_agent", "python", "my_pkg.agents:make_agent"),
])
def test_policy_strings_are_classified_by_the_projects_one_spec_grammar(text, kind, value):
    spec = parse_policy(text)
    assert (spec.kind, spec.value) == (kind, value)


def test_policy_labels_name_the_model_or_attribute():
    assert BfclOptions(policy="openai:http://h:1/v1#Qwen/Qwen3-8B", out=Path(".")).model_name() == "cm2-Qwen3-8B-FC"
    assert BfclOptions(policy="pkg.mod:agent", out=Path("."), mode="prompting").model_name() == "cm2-agent"
    assert BfclOptions(policy="hf:runs/tiny/grpo/final", out=Path(".")).model_name() == "cm2-final-FC"
    assert BfclOptions(policy="openai:http://h:1/v1#llama3:8b?rpm=5", out=Path(".")).model_name() == "cm2-llama3-8b-FC"


def test_unknown_policies_and_categories_are_rejected_with_the_choices():
    with pytest.raises(SpecError, match="MODULE:ATTRIBUTE"):
        parse_policy("not a policy")
    with pytest.raises(SpecError, match="'replay' .* cannot be a benchmark policy"):
        parse_policy("replay")
    with pytest.raises(BfclError, match="multi_turn_base"):
        parse_categories("multi_turn_bsae")
    assert parse_categories("multi_turn_base,multi_turn") == list(MULTI_TURN_CATEGORIES)


def test_every_multi_turn_ground_truth_call_parses_to_literal_arguments():
    calls = [call
             for category in MULTI_TURN_CATEGORIES
             for record in _json_lines(BFCL_PACKAGE / "data" / "possible_answer" / f"BFCL_v4_{category}.json")
             for turn in record["ground_truth"] for call in turn]
    assert len(calls) > 4000
    assert all(parse_python_call(call) is not None for call in calls)


def test_positional_ground_truth_arguments_are_named_after_the_function_doc():
    call = parse_python_call("sort('final_report.pdf')")
    doc = {"name": "sort", "parameters": {"properties": {"file_name": {"type": "string"}}}}
    assert call_arguments(call, [doc]) == {"file_name": "final_report.pdf"}
    assert call_arguments(call, []) is None


@pytest.mark.parametrize("text", ["__import__('os').system('echo hi')", "f(x=open('/etc/passwd'))", "a.b(c=1)",
                                  "f(**{'a': 1})", "[f(a=1)]", "f(", ""])
def test_call_strings_that_are_not_plain_literal_calls_are_refused_without_evaluation(text):
    assert parse_python_call(text) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_the_call_parser_never_raises_on_garbage(text):
    parse_python_call(text)


def test_table_columns_follow_the_papers_table_3():
    assert [header for header, _ in TABLE_COLUMNS] == [
        "MT Base", "MT Miss Func", "MT Miss Param", "MT Long Ctx", "MT Overall", "WS Base", "WS No Snippet",
        "WS Overall"]
