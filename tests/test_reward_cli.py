"""`cm2 reward compute FILE`: JSON and JSONL groups in, one result JSON per group and line out."""

import json

import pytest
from click.testing import CliRunner

from cm2_env.cli import main

GROUP = {
    "L": "reference",
    "f_norm": "none",
    "turns": [
        {"items": [{"id": "A", "weight": 0.4, "dependence": []}, {"id": "B", "weight": 0.3, "dependence": ["A"]}, {"id": "C", "weight": 0.3}]},
        {"items": [{"id": "D", "weight": 0.5}, {"id": "E", "weight": 0.5, "dependence": ["D"]}]},
    ],
    "rollouts": [
        {"failed": False, "turns": [
            {"steps": 3, "first_satisfied": {"A": 2, "B": 3, "C": 1}},
            {"steps": 2, "first_satisfied": {"D": 2, "E": 2}},
        ]},
        {"failed": False, "turns": [{"steps": 2, "first_satisfied": {"A": None, "B": 1, "C": 2}}]},
        {"failed": True, "turns": []},
    ],
}
RESULT_KEYS = {"failed", "R", "turn_rewards", "action_rewards", "adv_traj", "adv_turn", "adv_step"}


def run(tmp_path, text, name="groups.jsonl"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return CliRunner().invoke(main, ["reward", "compute", str(path)])


def test_a_pretty_printed_json_group_gives_one_result_line_with_the_documented_schema(tmp_path):
    result = run(tmp_path, json.dumps(GROUP, indent=2), "group.json")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert list(out) == ["rollouts"]
    r0, r1, r2 = out["rollouts"]
    assert set(r0) == set(r1) == set(r2) == RESULT_KEYS
    assert r0["R"] == pytest.approx(0.75) and r1["R"] == pytest.approx(0.15)
    assert r0["turn_rewards"] == pytest.approx([1.0, 0.5]) and len(r1["turn_rewards"]) == 1
    assert [len(t) for t in r0["action_rewards"]] == [3, 2] == [len(t) for t in r0["adv_step"]]
    assert r0["adv_traj"] == pytest.approx(0.3) and r0["adv_turn"] == pytest.approx([0.35, 0.0])
    assert r0["adv_step"][0] == pytest.approx([2 / 7, 0.5, 0.5])
    assert r2 == {"failed": True, **{k: None for k in RESULT_KEYS - {"failed"}}}


def test_jsonl_gives_one_result_per_group_in_order_and_echoes_ids(tmp_path):
    reached = dict(GROUP, L="reached", id="g2")
    result = run(tmp_path, json.dumps(GROUP) + "\n\n" + json.dumps(reached) + "\n")
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.output.strip().splitlines())
    assert "id" not in first and second["id"] == "g2"
    assert first["rollouts"][1]["R"] == pytest.approx(0.15)
    assert second["rollouts"][1]["R"] == pytest.approx(0.3)


def test_optional_settings_default_to_reference_none_and_no_minimum(tmp_path):
    bare = {k: v for k, v in GROUP.items() if k not in ("L", "f_norm")}
    result = run(tmp_path, json.dumps(bare) + "\n" + json.dumps(dict(bare, min_group_count=3)) + "\n")
    assert result.exit_code == 0, result.output
    default, minimum = (json.loads(line) for line in result.output.strip().splitlines())
    assert default["rollouts"][0]["adv_traj"] == pytest.approx(0.3)
    assert minimum["rollouts"][0]["adv_traj"] == 0.0  # only 2 live rollouts


def test_bad_fields_are_all_reported_with_file_line_and_field_and_nothing_is_printed(tmp_path):
    bad = json.loads(json.dumps(GROUP))
    bad["f-norm"] = "std"
    bad["turns"][0]["items"][1]["weight"] = "heavy"
    bad["turns"][1]["items"][1]["dependence"] = ["Z"]
    bad["rollouts"][0]["turns"][0]["first_satisfied"]["A"] = 7
    bad["rollouts"][1]["turns"][0]["first_satisfied"]["Q"] = 1
    bad["rollouts"][1]["failed"] = "no"
    path_text = json.dumps(GROUP) + "\n" + json.dumps(bad) + "\n"
    result = run(tmp_path, path_text)
    assert result.exit_code != 0
    path = tmp_path / "groups.jsonl"
    out = result.output
    assert "6 problem(s)" in out
    assert f"{path}:2: f-norm: unknown field" in out
    assert f"{path}:2: turns.0.items.1.weight: required: a finite number >= 0 (got 'heavy')" in out
    assert f"{path}:2: turns.1.items.1.dependence: 'Z' is not another item of this turn" in out
    assert f"{path}:2: rollouts.0.turns.0.first_satisfied.A: must be null or an action number in 1..steps (3)" in out
    assert f"{path}:2: rollouts.1.turns.0.first_satisfied.Q: not an item of reference turn 0" in out
    assert f"{path}:2: rollouts.1.failed: must be true or false" in out
    assert '"rollouts"' not in out  # the valid first group is not half-printed


def test_invalid_json_names_the_line(tmp_path):
    result = run(tmp_path, json.dumps(GROUP) + "\n" + '{"turns": [}\n')
    assert result.exit_code != 0
    assert f"{tmp_path / 'groups.jsonl'}:2: <group>: invalid JSON" in result.output
    broken = json.dumps(GROUP, indent=2).replace('"steps": 2,', '"steps": 2', 1)
    result = run(tmp_path, broken, "group.json")
    assert result.exit_code != 0 and "group.json:" in result.output and "invalid JSON" in result.output


def test_structural_mistakes_say_what_shape_is_expected(tmp_path):
    lines = [
        {"turns": {"items": []}, "rollouts": [{"turns": [{"steps": 1}]}]},
        {"turns": [{"items": []}], "rollouts": [{"turns": [{"first_satisfied": []}]}]},
        [1],
    ]
    result = run(tmp_path, "\n".join(json.dumps(line) for line in lines) + "\n")
    assert result.exit_code != 0
    out = result.output
    assert ':1: turns: required: the reference turns, a list of {"items": [...]}' in out
    assert ":1: rollouts.0.turns: 1 turns reached but the group has 0 reference turns" in out
    assert ":2: rollouts.0.turns.0.steps: required: the number of actions in the turn, an integer >= 0 (got None)" in out
    assert ":2: rollouts.0.turns.0.first_satisfied: must be an object mapping item id -> action number or null" in out
    assert ":3: <group>: a group must be a JSON object, got list" in out
