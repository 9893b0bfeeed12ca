"""`cm2 bench toolsandbox`: selection, aggregation and the runner protocol against files recorded from a real
ToolSandbox run (no ToolSandbox needed), and, where ``CM2_TOOLSANDBOX_PYTHON`` names an interpreter with
ToolSandbox installed, real runs: a scripted policy served by cm2 serve and the unhelpful baseline."""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from benchmarks.toolsandbox import (COLUMNS, ToolSandboxError, ToolSandboxOptions, aggregate, load_results,
                                    run_toolsandbox, select)
from cm2_env.cli import main
from cm2_env.errors import SpecError

RECORDED = Path(__file__).parent / "support" / "toolsandbox"
LISTING = json.loads((RECORDED / "listing.json").read_text())  # 6 base scenarios x 8 variants, from `list`
RESULTS = [json.loads(line) for line in (RECORDED / "results.jsonl").read_text().splitlines()]


def _options(tmp_path, **values):
    return ToolSandboxOptions(**{"policy": "noop", "user": "scripted", "python": sys.executable,
                                 "out": tmp_path / "run", "skip_rapidapi": True, **values})


def test_selection_skips_rapidapi_and_multi_user_turn_scenarios_with_their_reason(tmp_path):
    rows = LISTING["scenarios"]
    chosen, skipped = select(rows, _options(tmp_path))
    rapid = {r["name"] for r in rows if r["rapidapi"]}
    multi = {r["name"] for r in rows if "MULTIPLE_USER_TURN" in r["categories"]} - rapid
    assert len(rapid) == len(multi) == 8
    assert set(skipped) == rapid | multi and set(chosen) == {r["name"] for r in rows} - rapid - multi
    assert all("RapidAPI" in skipped[name] for name in rapid) and all("LLM user" in skipped[name] for name in multi)
    assert chosen == [r["name"] for r in rows if r["name"] in set(chosen)]  # the listing's order

    with_llm_user, skipped = select(rows, _options(tmp_path, user="openai:http://127.0.0.1:9/v1#user"))
    assert set(with_llm_user) == set(chosen) | multi and set(skipped) == rapid
    with_key, _ = select(rows, _options(tmp_path, skip_rapidapi=False, user="openai:http://127.0.0.1:9/v1#u"))
    assert len(with_key) == len(rows)


def test_selection_filters_by_paper_column_or_category_name_then_limits(tmp_path):
    rows = LISTING["scenarios"]
    scrambled, _ = select(rows, _options(tmp_path, categories=["TNS", "arg_type_scrambled"]))
    assert scrambled and all({"TOOL_NAME_SCRAMBLED", "ARG_TYPE_SCRAMBLED"} & set(r["categories"])
                             for r in rows if r["name"] in scrambled)
    named, _ = select(rows, _options(tmp_path, scenarios=["wifi_off", "get_wifi"], limit=1))
    order = [r["name"] for r in rows]
    assert named == [min(("wifi_off", "get_wifi"), key=order.index)]  # the listing's order, not the option's
    with pytest.raises(SpecError, match="unknown ToolSandbox category 'XYZ'"):
        select(rows, _options(tmp_path, categories=["XYZ"]))
    with pytest.raises(ToolSandboxError, match="unknown scenario"):
        select(rows, _options(tmp_path, scenarios=["no_such_scenario"]))


def test_aggregation_follows_toolsandbox_s_category_summary():
    scores = aggregate(RESULTS)
    assert scores["overall_similarity"] == pytest.approx(100 * statistics.fmean(r["similarity"] for r in RESULTS),
                                                         abs=0.01)
    for column, category in COLUMNS:
        members = [r["similarity"] for r in RESULTS if category in r["categories"]
                   and not (category == "THREE_DISTRACTION_TOOLS" and {
                       "TOOL_NAME_SCRAMBLED", "TOOL_DESCRIPTION_SCRAMBLED", "ARG_DESCRIPTION_SCRAMBLED",
                       "ARG_TYPE_SCRAMBLED"} & set(r["categories"]))]
        expected = round(100 * statistics.fmean(members), 2) if members else None
        assert scores["columns"][column] == expected, column
        assert scores["counts"][column] == len(members)
    # by hand: the script knows the real tool names, so of the four tool-name-scrambled scenarios only the
    # insufficient-information one (where declining is right) succeeds; all four plain bases succeed
    assert scores["columns"]["TNS"] == 25.0 and scores["columns"]["0-DT"] == 100.0
    assert scores["counts"]["3-DT"] == scores["counts"]["0-DT"]  # scrambled variants are not counted twice
    assert aggregate([])["overall_similarity"] is None


def _fake_toolsandbox_python(tmp_path, stop_after=None, unreachable=()):
    """An executable standing in for ToolSandbox's interpreter: it answers the runner protocol from the recorded
    files (with stray output mixed in, as ToolSandbox prints), records each job, and can die part-way."""
    script = tmp_path / "fake-python"
    script.write_text(f"""#!{sys.executable}
import json, sys
args = sys.argv[1:]
if args[:1] == ["-c"]:
    sys.exit(0)
if args[1] == "list":
    print("a stray line from a library")
    print(json.dumps(json.load(open({str(RECORDED / 'listing.json')!r}))))
    sys.exit(0)
job = json.load(open(args[2]))
with open({str(tmp_path / 'jobs.jsonl')!r}, "a") as log:
    log.write(json.dumps(job) + "\\n")
results = {{}}
for line in open({str(RECORDED / 'results.jsonl')!r}):
    row = json.loads(line)
    results[row["name"]] = row
for i, name in enumerate(job["names"]):
    if {stop_after!r} is not None and i == {stop_after!r}:
        print('{{"name": "half a line', end="", flush=True)
        sys.exit(3)
    print("noise")
    row = dict(results[name])
    if name in {list(unreachable)!r}:
        row.update(similarity=0.0, exception_type="APIConnectionError", error="Connection error.", unreachable=True)
    print(json.dumps(row), flush=True)
""")
    script.chmod(0o755)
    return str(script)


def test_a_run_resumes_after_the_runner_dies_and_reports_what_was_recorded(tmp_path):
    options = _options(tmp_path, python=_fake_toolsandbox_python(tmp_path, stop_after=5))
    with pytest.raises(ToolSandboxError, match="exited with status 3.*resume"):
        run_toolsandbox(options)
    assert len(load_results(tmp_path / "run" / "results.jsonl")) == 5  # the cut line is not a result...
    text = (tmp_path / "run" / "results.jsonl").read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 5  # ...and is gone, so the next line starts clean
    options.python = _fake_toolsandbox_python(tmp_path)
    report = run_toolsandbox(options)
    jobs = [json.loads(line) for line in (tmp_path / "jobs.jsonl").read_text().splitlines()]
    chosen, skipped = select(LISTING["scenarios"], options)
    assert jobs[0]["names"] == chosen and jobs[1]["names"] == chosen[5:]  # the second run played only the rest
    assert jobs[0]["agent"] == {"kind": "unhelpful"} and jobs[0]["user"] == {"kind": "scripted"}
    recorded = {row["name"]: row for row in RESULTS}
    assert report.scores == aggregate([recorded[name] for name in chosen]) and report.scenarios == len(chosen)
    assert report.skipped == skipped and report.toolsandbox_commit == LISTING["git_sha"]
    written = json.loads((tmp_path / "run" / "toolsandbox_results.json").read_text())
    assert written["overall_similarity"] == report.scores["overall_similarity"]
    markdown = (tmp_path / "run" / "toolsandbox_results.md").read_text()
    assert "| Overall | STC | MTC | SUT | MUT | SD | C | II | 0-DT | 3-DT | 10-DT | AT | TNS | TDS | ADS | ATS |" \
        in markdown and LISTING["git_sha"] in markdown
    assert "Skipped (not scored): 8 needs RapidAPI" in markdown and "8 needs an LLM user simulator" in markdown


def test_the_cli_prints_the_table_and_a_json_line_and_refuses_another_run_in_the_same_folder(tmp_path):
    python = _fake_toolsandbox_python(tmp_path)
    out = tmp_path / "run"
    args = ["bench", "toolsandbox", "--policy", "openai:http://127.0.0.1:9/v1#m?key_env=MY_KEY", "--python",
            python, "--skip-rapidapi", "--limit", "4", "--out", str(out), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    line = json.loads(result.output.strip().splitlines()[-1])
    assert 0 <= line["overall_similarity"] <= 100 and line["scenarios"] == 4
    job = json.loads((tmp_path / "jobs.jsonl").read_text().splitlines()[0])
    assert job["agent"] == {"kind": "endpoint", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                            "api_key_env": "MY_KEY"}  # the key's name travels, never the key
    other = CliRunner().invoke(main, [*args[:3], "noop", *args[4:]])
    assert other.exit_code != 0 and "different policy" in other.output


def test_a_scenario_lost_to_an_unreachable_endpoint_is_not_scored_and_is_played_again(tmp_path):
    chosen, _ = select(LISTING["scenarios"], _options(tmp_path))
    lost = chosen[2]
    args = ["bench", "toolsandbox", "--policy", "noop", "--skip-rapidapi", "--out", str(tmp_path / "run"), "--json"]
    first = CliRunner().invoke(main, [*args, "--python", _fake_toolsandbox_python(tmp_path, unreachable=[lost])])
    assert first.exit_code != 0 and "1 scenarios failed because an endpoint was unreachable" in first.output
    assert lost not in load_results(tmp_path / "run" / "results.jsonl")
    assert json.loads(first.output.strip().splitlines()[-2])["scenarios"] == len(chosen) - 1
    second = CliRunner().invoke(main, [*args, "--python", _fake_toolsandbox_python(tmp_path)])
    assert second.exit_code == 0, second.output
    jobs = [json.loads(line) for line in (tmp_path / "jobs.jsonl").read_text().splitlines()]
    assert jobs[-1]["names"] == [lost]
    assert json.loads(second.output.strip().splitlines()[-1])["scenarios"] == len(chosen)


def test_without_a_toolsandbox_python_one_line_says_so_and_points_to_the_docs(tmp_path):
    for extra in ([], ["--python", sys.executable]):
        result = CliRunner(env={"CM2_TOOLSANDBOX_PYTHON": None}).invoke(main, ["bench", "toolsandbox", "--policy", "noop", "--out",
                                                  str(tmp_path / "x"), *extra])
        assert result.exit_code != 0
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "docs/benchmarks.md" in lines[0], result.output
    with pytest.raises(SpecError, match="oracle is not available"):
        _options(tmp_path, policy="oracle").check()


REAL = os.environ.get("CM2_TOOLSANDBOX_PYTHON")
needs_toolsandbox = pytest.mark.skipif(not REAL, reason="set CM2_TOOLSANDBOX_PYTHON to a Python with ToolSandbox "
                                                         "installed (docs/benchmarks.md) to run ToolSandbox itself")


@needs_toolsandbox
def test_a_scripted_policy_served_by_cm2_serve_scores_1_on_three_scenarios_and_noop_scores_0(tmp_path):
    from tests.support.toolsandbox_script import SCENARIOS

    scripted = run_toolsandbox(ToolSandboxOptions(
        policy="tests.support.toolsandbox_script:ToolSandboxScript", user="scripted", python=REAL,
        out=tmp_path / "scripted", scenarios=list(SCENARIOS), concurrency=2))
    rows = load_results(tmp_path / "scripted" / "results.jsonl")
    assert {name: rows[name]["similarity"] for name in SCENARIOS} == {name: 1.0 for name in SCENARIOS}
    assert scripted.scores["overall_similarity"] == 100.0 and not scripted.errors
    noop = run_toolsandbox(ToolSandboxOptions(policy="noop", user="scripted", python=REAL, out=tmp_path / "noop",
                                              scenarios=list(SCENARIOS), concurrency=2))
    assert noop.scores["overall_similarity"] == 0.0 and noop.scenarios == 3


@needs_toolsandbox
def test_a_dead_policy_endpoint_scores_nothing_rather_than_zero(tmp_path):
    import socket

    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    report = run_toolsandbox(ToolSandboxOptions(policy=f"openai:http://127.0.0.1:{port}/v1#m", user="scripted",
                                                python=REAL, out=tmp_path / "dead", scenarios=["wifi_off"]))
    assert report.scenarios == 0 and not report.complete and "unreachable" in report.notes[-1]
    assert load_results(tmp_path / "dead" / "results.jsonl") == {}


class RaisingAgent:
    async def act(self, messages, tools, context=None):
        raise ValueError("a policy bug")


@needs_toolsandbox
def test_a_policy_that_raises_is_scored_0_as_toolsandbox_does_not_taken_for_an_outage(tmp_path):
    report = run_toolsandbox(ToolSandboxOptions(policy="tests.test_bench_toolsandbox:RaisingAgent", user="scripted",
                                                python=REAL, out=tmp_path / "raising", scenarios=["wifi_off"]))
    assert report.complete and report.scenarios == 1 and report.scores["overall_similarity"] == 0.0
    assert "InternalServerError" in report.errors["wifi_off"]

