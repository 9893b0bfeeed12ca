"""`cm2 data validate|filter|stats` through click's CliRunner, via the top-level lazy `cm2` group."""

import json
import re

from click.testing import CliRunner

from cm2_env.cli import main
from tests.test_data_filters import good
from tests.test_data_validate import valid_record

PROBLEM_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<id>[^:]+): (?P<field>[^:]+): (?P<message>.+)$")


def run(*args):
    return CliRunner().invoke(main, ["data", *args], catch_exceptions=False)


def test_validate_tooltalk_reports_78_dialogues_0_problems_and_exits_0():
    result = run("validate", "tooltalk")
    assert result.exit_code == 0
    assert result.output.strip().splitlines() == ["tooltalk: 78 dialogues, 0 problems"]


def test_validate_prints_one_line_per_problem_then_a_summary_and_exits_1(tmp_path):
    bad_weight = valid_record("bad-weight")
    bad_weight["checklists"][0][0][0]["weight"] = 0.9
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([json.dumps(valid_record("ok")), json.dumps(bad_weight), "{not json"]) + "\n")
    result = run("validate", str(path))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    problems = [PROBLEM_LINE.match(line).groupdict() for line in lines[:-1]]
    assert [(p["path"], p["line"], p["id"], p["field"]) for p in problems] == [
        (str(path), "2", "bad-weight", "checklists.0.0"),
        (str(path), "3", "?", "<record>"),
    ]
    assert lines[-1] == f"{path}: 2 dialogues, 2 problems in 2 records"


def test_validate_of_a_missing_file_says_so_and_fails(tmp_path):
    result = CliRunner().invoke(main, ["data", "validate", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 1
    assert "no such file" in result.output


def test_filter_writes_the_kept_records_and_a_report_next_to_them(tmp_path):
    rejected = good() | {"id": "unknown-tool"}
    rejected["messages"][2]["tool_calls"][0]["function"]["name"] = "GetWether"
    kept = [good() | {"id": "a"}, good() | {"id": "b"}]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in [kept[0], rejected, kept[1]]) + "\n{broken\n")
    out = tmp_path / "out" / "kept.jsonl"
    result = run("filter", str(source), str(out))
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in out.read_text().splitlines()] == kept
    report = json.loads((tmp_path / "out" / "kept.jsonl.report.json").read_text())
    assert report["total"] == 3 and report["kept"] == 2 and report["rejected"] == 1
    assert report["criteria"]["tool_schema"] == 1 and sum(report["criteria"].values()) == 1
    assert report["examples"]["tool_schema"][0]["line"] == 2
    assert report["unreadable_lines"] == [4]
    assert "tool_schema" in result.output and "kept 2 of 3 records" in result.output


def test_filter_honours_criteria_require_think_and_report_path(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(good()) + "\n")
    out, report_path = tmp_path / "kept.jsonl", tmp_path / "r.json"
    result = run("filter", str(source), str(out), "--criteria", "think_tags,role_order", "--require-think",
                 "--report", str(report_path))
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["criteria"] == {"think_tags": 1, "role_order": 0}
    assert report["require_think"] is True and report["kept"] == 0
    assert out.read_text() == ""


def test_filter_rejects_unknown_criteria_with_a_usage_error(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(good()) + "\n")
    result = CliRunner().invoke(main, ["data", "filter", str(source), str(tmp_path / "o.jsonl"), "--criteria", "nope"])
    assert result.exit_code == 2
    assert "unknown nope" in result.output


def test_stats_prints_a_table_of_the_dataset():
    result = run("stats", "tooltalk")
    assert result.exit_code == 0
    rows = {line.strip("│ ").split("│")[0].strip(): line for line in result.output.splitlines() if "│" in line}
    assert "78" in rows["dialogues"] and "230" in rows["turns"]
    assert "focus tool.content" in rows and "required share" in rows and "actions per turn mean" in rows


def test_stats_json_gives_the_numbers():
    result = run("stats", "tooltalk", "--json")
    numbers = json.loads(result.output)
    assert numbers["dialogues"] == 78 and numbers["turns"] == 230
    assert sum(numbers["focus"].values()) == numbers["items"]
    assert 0 < numbers["required_share"] < 1
    assert numbers["actions"] >= numbers["turns"] and numbers["actions_per_turn_max"] >= 1


def test_stats_of_a_structurally_broken_file_lists_the_problems(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": "x"}) + "\n")
    result = CliRunner().invoke(main, ["data", "stats", str(path)])
    assert result.exit_code == 1
    assert f"{path}:1: x: messages:" in result.output
