"""``cm2 reward``: checklist rewards and group advantages (paper Eq. 1-10) from verdict histories in a file.

``cm2 reward compute FILE`` reads one group JSON object (or a JSON list of groups), or JSONL with one group per
line, and prints one result JSON object per group, one per line. A group::

    {"L": "reference"|"reached", "f_norm": "std"|"none", "min_group_count": 0, "id": "optional, echoed",
     "turns": [{"items": [{"id": "C0", "weight": 0.5, "dependence": []}, ...]}, ...],
     "rollouts": [{"failed": false, "turns": [{"steps": 3, "first_satisfied": {"C0": 2, "C1": null}}]}]}

A rollout's ``turns`` are the turns it reached, in order; ``first_satisfied`` maps an item id to the action
(1..steps) after which the judge first found it satisfied, or null (a missing id also means never). Defaults:
L "reference", f_norm "none", min_group_count 0. The result is :meth:`cm2_env.reward.GroupScore.to_json`:
``{"rollouts": [{"failed", "R", "turn_rewards", "action_rewards", "adv_traj", "adv_turn", "adv_step"}]}``,
nulls for failed rollouts. Every problem of the input is reported as ``FILE:LINE: FIELD: message`` before
anything is computed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from cm2_env.data.io import read_records
from cm2_env.reward.group import score_group
from cm2_env.reward.items import F_NORMS, L_MODES, choice_problem
from cm2_env.reward.record import replay_histories

GROUP_KEYS = ("id", "L", "f_norm", "min_group_count", "turns", "rollouts")
ROLLOUT_KEYS = ("failed", "turns")
ROLLOUT_TURN_KEYS = ("steps", "first_satisfied")


def read_groups(path: Path) -> list[tuple[int, Any, str | None]]:
    """``(line, decoded JSON, decoding error)`` per group: a whole-file JSON object or list, else JSONL
    (:func:`cm2_env.data.io.read_records`)."""
    records = [(raw.line, raw.data, raw.error) for raw in read_records(path)]
    if not records:
        raise ValueError(f"{path}: the file holds no groups. Fix: one group JSON object per line "
                         "(`cm2 reward compute --help` shows the format)")
    return records


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_keys(obj: dict, allowed: tuple[str, ...], field: str, problems: list[tuple[str, str]]) -> None:
    for key in obj:
        if key not in allowed:
            problems.append((f"{field}.{key}" if field else key, f"unknown field; allowed fields: {', '.join(allowed)}"))


def _check_items(turn: Any, field: str, problems: list[tuple[str, str]]) -> list[str]:
    """Problems of one reference turn ``{"items": [...]}``; returns the turn's item ids."""
    if not isinstance(turn, dict) or not isinstance(turn.get("items"), list):
        problems.append((field, 'must be an object {"items": [{"id", "weight", "dependence"}, ...]}'))
        return []
    ids: list[str] = []
    for k, item in enumerate(turn["items"]):
        where = f"{field}.items.{k}"
        if not isinstance(item, dict):
            problems.append((where, 'must be an object {"id", "weight", "dependence"}'))
            continue
        if not isinstance(item.get("id"), str) or not item["id"]:
            problems.append((f"{where}.id", "required: a non-empty string"))
        elif item["id"] in ids:
            problems.append((f"{where}.id", f"duplicate id {item['id']!r} in this turn; ids must be unique per turn"))
        else:
            ids.append(item["id"])
        weight = item.get("weight")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            problems.append((f"{where}.weight", f"required: a finite number >= 0 (got {weight!r})"))
        deps = item.get("dependence", [])
        if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
            problems.append((f"{where}.dependence", f"must be a list of item ids (got {deps!r})"))
    weights = [item.get("weight") for item in turn["items"] if isinstance(item, dict)]
    if all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
        try:
            total = math.fsum(weights)
        except OverflowError:
            total = math.inf
        if not math.isfinite(total) or total > 1 + 1e-6:
            problems.append((f"{field}.items", f"the weights sum to {total:g}; a turn's weights sum to 1, so that R "
                                               "stays in [0, 1]. Fix: divide each weight by their sum"))
    for k, item in enumerate(turn["items"]):
        if isinstance(item, dict) and isinstance(item.get("dependence"), list):
            for d in item["dependence"]:
                if isinstance(d, str) and (d not in ids or d == item.get("id")):
                    problems.append((f"{field}.items.{k}.dependence", f"{d!r} is not another item of this turn"))
    return ids


def _check_rollout(rollout: Any, field: str, turn_ids: list[list[str]], problems: list[tuple[str, str]]) -> None:
    if not isinstance(rollout, dict):
        problems.append((field, 'must be an object {"failed": bool, "turns": [...]}'))
        return
    _check_keys(rollout, ROLLOUT_KEYS, field, problems)
    if not isinstance(rollout.get("failed", False), bool):
        problems.append((f"{field}.failed", f"must be true or false (got {rollout['failed']!r})"))
    turns = rollout.get("turns", [] if rollout.get("failed") else None)
    if not isinstance(turns, list):
        problems.append((f"{field}.turns", "required: the list of turns the rollout reached, in order"))
        return
    if len(turns) > len(turn_ids):
        problems.append((f"{field}.turns", f"{len(turns)} turns reached but the group has {len(turn_ids)} reference turns"))
    for t, (turn, ids) in enumerate(zip(turns, turn_ids)):
        where = f"{field}.turns.{t}"
        if not isinstance(turn, dict):
            problems.append((where, 'must be an object {"steps": M, "first_satisfied": {id: action or null}}'))
            continue
        _check_keys(turn, ROLLOUT_TURN_KEYS, where, problems)
        steps = turn.get("steps")
        if not _is_int(steps) or steps < 0:
            problems.append(
                (f"{where}.steps", f"required: the number of actions in the turn, an integer >= 0 (got {steps!r})")
            )
            steps = None
        first = turn.get("first_satisfied", {})
        if not isinstance(first, dict):
            problems.append((f"{where}.first_satisfied", "must be an object mapping item id -> action number or null"))
            continue
        for c, a in first.items():
            if c not in ids:
                message = f"not an item of reference turn {t} (items: {', '.join(ids)})"
                problems.append((f"{where}.first_satisfied.{c}", message))
            elif a is not None and (not _is_int(a) or a < 0 or (steps is not None and a > steps)):
                message = (
                    f"must be null or an action number in 1..steps ({steps}), "
                    f"or 0 for 'before the first action' (got {a!r})"
                )
                problems.append((f"{where}.first_satisfied.{c}", message))


def check_group(group: Any) -> list[tuple[str, str]]:
    """Every ``(field, message)`` problem of one group JSON object (empty when it can be scored)."""
    if not isinstance(group, dict):
        return [("", f"a group must be a JSON object, got {type(group).__name__}")]
    problems: list[tuple[str, str]] = []
    _check_keys(group, GROUP_KEYS, "", problems)
    for key, default, allowed in (("L", "reference", L_MODES), ("f_norm", "none", F_NORMS)):
        problem = choice_problem(group.get(key, default), allowed)
        if problem:
            problems.append((key, problem))
    min_count = group.get("min_group_count", 0)
    if not _is_int(min_count) or min_count < 0:
        problems.append(("min_group_count", f"must be an integer >= 0 (got {min_count!r})"))
    turns = group.get("turns")
    if not isinstance(turns, list):
        problems.append(("turns", 'required: the reference turns, a list of {"items": [...]}'))
        turns = []
    turn_ids = [_check_items(turn, f"turns.{t}", problems) for t, turn in enumerate(turns)]
    rollouts = group.get("rollouts")
    if not isinstance(rollouts, list):
        problems.append(("rollouts", 'required: a list of {"failed": bool, "turns": [...]}'))
        rollouts = []
    for i, rollout in enumerate(rollouts):
        _check_rollout(rollout, f"rollouts.{i}", turn_ids, problems)
    return problems


def compute_group(group: dict[str, Any]) -> dict[str, Any]:
    """The result JSON of one checked group."""
    records = replay_histories([turn["items"] for turn in group["turns"]], group["rollouts"], L=group.get("L", "reference"))
    result = score_group(records, f_norm=group.get("f_norm", "none"),
                         min_group_count=group.get("min_group_count", 0)).to_json()
    return {"id": group["id"], **result} if "id" in group else result


@click.group()
def reward() -> None:
    """Compute checklist rewards and group advantages (paper Eq. 1-10)."""


@reward.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def compute(file: Path) -> None:
    """Rewards and trajectory/turn/step advantages of every group in FILE.

    FILE holds one group JSON object, or JSONL with one group per line. A group:

    \b
    {"L": "reference"|"reached", "f_norm": "std"|"none", "min_group_count": 0,
     "turns": [{"items": [{"id": "C0", "weight": 0.5, "dependence": ["..."]}]}],
     "rollouts": [{"failed": false,
                   "turns": [{"steps": 3, "first_satisfied": {"C0": 2, "C1": null}}]}]}

    A rollout's turns are the turns it reached; first_satisfied gives the action (1..steps) after which an item
    was first satisfied, or null. Prints one JSON result per group, per line: {"rollouts": [{"failed", "R",
    "turn_rewards", "action_rewards", "adv_traj", "adv_turn", "adv_step"}]} (nulls for failed rollouts).
    """
    problems: list[str] = []
    groups = []
    for line, data, error in read_groups(file):
        found = [("", error)] if error else check_group(data)
        problems.extend(f"{file}:{line}: {field or '<group>'}: {message}" for field, message in found)
        groups.append(data)
    if problems:
        shown = "\n".join(problems[:20]) + (f"\n... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise click.ClickException(
            f"{len(problems)} problem(s) in {file}:\n{shown}\n"
            "Fix the fields listed; `cm2 reward compute --help` shows the format."
        )
    for group in groups:
        click.echo(json.dumps(compute_group(group)))
