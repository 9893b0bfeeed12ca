"""`cm2 view`: the data behind the report (verdicts on the right actions, payments that add up to R), the
escaping of hostile transcripts, training runs, and serving. The browser test is tests/test_view_browser.py."""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from agents import ReplayAgent
from agents.probes import ProbeAgent
from agents.rollout import run_rollouts
from cm2_env.cli import main
from cm2_env.data import load_dialogues
from cm2_env.view import build_report, report_server
from cm2_env.view.assemble import checklist_texts, episode_view, load_run
from tests.support.view_runs import hostile_run


@pytest.fixture(scope="module")
def dialogues():
    return load_dialogues("tooltalk")[:4]


@pytest.fixture(scope="module")
def rollout_dir(tmp_path_factory, dialogues):
    """A replay run and a probe run (partial rewards, unsatisfied items), step-level payments, in one folder."""
    out = tmp_path_factory.mktemp("rollout")
    run_rollouts(dialogues, ReplayAgent(dialogues), out_dir=out / "replay", progress=False,
                 env_kwargs={"reward_assignment": "step"})
    run_rollouts(dialogues, ProbeAgent(dialogues, "negated", replay_calls=True), out_dir=out / "probe", group_size=2,
                 progress=False, env_kwargs={"reward_assignment": "step"})
    return out


def _views(folder):
    texts = checklist_texts(load_dialogues("tooltalk"))
    return [(r, episode_view(r, texts.get(r["dialogue_id"]))) for r in load_run(folder)["episodes"]]


@pytest.mark.parametrize("run", ["replay", "probe"])
def test_each_verdict_sits_on_the_action_that_satisfied_it_and_the_payments_add_up_to_R(rollout_dir, run):
    checked = 0
    for record, view in _views(rollout_dir / run):
        assert len(view["turns"]) == record["turns_reached"]
        for t, turn in enumerate(view["turns"]):
            verdicts = record["verdicts"][t]
            for action in turn["actions"]:
                for item in action["satisfied"]:
                    assert verdicts[item["id"]]["first_action"] == action["index"] and verdicts[item["id"]]["passed"]
                    assert item["source"] == verdicts[item["id"]]["source"] and item["question"]
                    checked += 1
            placed = {i["id"] for a in turn["actions"] for i in a["satisfied"]}
            assert placed == {k for k, v in verdicts.items() if v["passed"]}
            assert {i["id"] for i in turn["unsatisfied"]} == {k for k, v in verdicts.items() if not v["passed"]}
        paid = [a["paid"] for turn in view["turns"] for a in turn["actions"]]
        assert paid == record["rewards"]  # the env's own step payments, in order
        assert sum(paid) == pytest.approx(record["R"], abs=1e-9)
        assert view["sums"]["actions"] == pytest.approx(record["R"], abs=1e-9)
        assert view["sums"]["items"] == pytest.approx(record["R"], abs=1e-9)
    assert checked > 10


def test_the_probe_run_shows_unsatisfied_items_with_question_and_pass_condition(rollout_dir):
    views = [v for _, v in _views(rollout_dir / "probe")]
    missed = [i for v in views for t in v["turns"] for i in t["unsatisfied"]]
    assert missed and all(i["question"] and "pass_condition" in i for i in missed)
    assert any(v["R"] < 1 for v in views)


def test_model_output_cannot_end_the_data_block_or_inject_markup(tmp_path):
    out = hostile_run(tmp_path)
    report = tmp_path / "report.html"
    build_report(out, report)
    html = report.read_text()
    assert len(re.findall(r"<script\b", html)) == 2  # the data block and the page's own script, nothing else
    data = html.split('<script type="application/json" id="cm2-data">', 1)[1].split("</script>", 1)[0]
    assert "<" not in data and ">" not in data  # no tag can open or close inside the data
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html and "document.write" not in html


def test_a_training_run_gets_curves_and_its_logged_rollouts_by_step(tmp_path):
    from tests.support.tiny_models import micro_config, micro_model_dir
    from train.grpo import train

    model = micro_model_dir(tmp_path / "micro", seed=0)
    config = micro_config(model, tmp_path / "run", steps=3, group_size=2, prompts_per_step=2, max_new_tokens=8,
                          rollout_log_interval=2, checkpoint_interval=0)
    train(config, dialogues=load_dialogues("tooltalk")[:2])
    rows = [json.loads(line) for line in (tmp_path / "run" / "rollouts.jsonl").read_text().splitlines()]
    assert {r["step"] for r in rows} == {2} and len(rows) == 4  # every 2nd step: step 2's 2 x 2 episodes
    result = CliRunner().invoke(main, ["view", str(tmp_path / "run"), "--out", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert "4 episodes, 3 training steps" in result.output
    html = (tmp_path / "r.html").read_text()
    assert html.count("<svg") == 1 and "mean reward R" in html and "clip fraction" in html


def test_a_folder_without_a_run_is_refused_naming_what_it_should_hold(tmp_path):
    result = CliRunner().invoke(main, ["view", str(tmp_path)])
    assert result.exit_code == 2 and "trajectories.jsonl (cm2 rollout), metrics.jsonl" in result.output


def test_broken_lines_are_counted_and_the_rest_is_shown(rollout_dir, tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    lines = (rollout_dir / "replay" / "trajectories.jsonl").read_text().splitlines()
    (folder / "trajectories.jsonl").write_text("\n".join([lines[0], "{not json", lines[1][:40], *lines[1:]]) + "\n")
    stats = build_report(folder, tmp_path / "r.html")
    assert stats["episodes"] == len(lines) and "2 lines of the run's files did not parse" in stats["notes"][0]


def test_serving_answers_the_report_and_nothing_else(rollout_dir, tmp_path):
    report = tmp_path / "r.html"
    build_report(rollout_dir / "replay", report)
    (tmp_path / "secret.txt").write_text("not for the network")
    server = report_server(report, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"{base}/r.html") as answer:
            assert answer.read() == report.read_bytes()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/secret.txt")
        assert refused.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def _three_variant_dataset(tmp_path):
    """Four bundled dialogues with three checklist variants: the original, reversed weights, a dependency."""
    import copy

    records = [d.to_record() for d in load_dialogues("tooltalk")[:4]]
    for record in records:
        first = record["checklists"][0]
        reversed_weights, gated = copy.deepcopy(first), copy.deepcopy(first)
        for turn in reversed_weights:
            for item, weight in zip(turn, [i["weight"] for i in turn][::-1]):
                item["weight"] = weight
        for turn in gated:
            if len(turn) > 1:
                turn[0]["dependence"] = [turn[-1]["id"]]
        record["checklists"] = [first, reversed_weights, gated]
    path = tmp_path / "variants.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return load_dialogues(str(path))


@pytest.mark.parametrize("mode", ["mean", "majority"])
def test_several_checklist_variants_show_each_variant_s_verdicts_and_add_up_only_where_they_can(tmp_path, mode):
    dialogues = _three_variant_dataset(tmp_path)
    run_rollouts(dialogues, ProbeAgent(dialogues, "negated", replay_calls=True), out_dir=tmp_path / "run",
                 progress=False, env_kwargs={"reward_assignment": "step", "checklist_variants": mode, "strict": False})
    texts = checklist_texts(dialogues)
    for record in load_run(tmp_path / "run")["episodes"]:
        view = episode_view(record, texts[record["dialogue_id"]])
        badges = [i for t in view["turns"] for a in t["actions"] for i in a["satisfied"]]
        assert badges and {i["variant"] for i in badges} <= {0, 1, 2}
        for t, turn in enumerate(view["turns"]):
            for action in turn["actions"]:
                for item in action["satisfied"]:
                    verdict = record["verdicts"][t][f"v{item['variant']}.{item['id']}"]
                    assert verdict["first_action"] == action["index"] and item["source"] == verdict["source"]
                    assert item["question"]
        assert view["sums"]["actions"] == pytest.approx(record["R"], abs=1e-9)
        if mode == "mean":
            assert view["sums"]["items"] == pytest.approx(record["R"], abs=1e-9)
        elif view["sums"]["items"] is None:  # majority: no per-item share of R is claimed
            assert all(i["contribution"] is None for i in badges)


def test_non_finite_numbers_malformed_records_and_lone_surrogates_do_not_break_the_report(rollout_dir, tmp_path):
    lines = (rollout_dir / "replay" / "trajectories.jsonl").read_text().splitlines()
    good = json.loads(lines[0])
    folder = tmp_path / "odd"
    folder.mkdir()
    odd = [dict(good, R=float("nan"), rewards=[float("inf")] * len(good["rewards"])),
           dict(good, reward_record=[1, 2]), dict(good, dialogue_id=["x"]),
           dict(good, messages=[None, *good["messages"][:3], {"role": "tool", "content": "cut \ud800 here"}])]
    (folder / "trajectories.jsonl").write_text("".join(json.dumps(r) + "\n" for r in odd))
    stats = build_report(folder, tmp_path / "r.html")
    assert stats["episodes"] == 3 and "1 episode records could not be read" in " ".join(stats["notes"])
    html = (tmp_path / "r.html").read_text(encoding="utf-8")
    data = html.split('id="cm2-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(data)["index"][0][4] is None  # NaN became null: JSON.parse would reject NaN


def test_what_a_truncated_episode_is_paid_after_its_last_action_is_shown(rollout_dir):
    record = json.loads((rollout_dir / "replay" / "trajectories.jsonl").read_text().splitlines()[0])
    view = episode_view(record)
    assert view["paid_after_actions"] is None  # a complete episode: every payment belongs to an action
    truncated = dict(record, rewards=[*record["rewards"], 0.25])
    assert episode_view(truncated)["paid_after_actions"] == 0.25

