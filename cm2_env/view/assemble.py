"""What ``cm2 view`` shows, assembled from a run folder: pure data in, plain JSON-ready dicts out.

Contract:

- :func:`load_run` reads a folder written by ``cm2 rollout`` (``trajectories.jsonl``), ``cm2 train`` (its step log
  ``metrics.jsonl`` and, when the run logged them, ``rollouts.jsonl``; a preset's folder holds them under
  ``grpo/``) or ``cm2 bench`` (its ``*_results.json`` report, and ToolSandbox's ``results.jsonl``). Lines that do
  not parse are counted, never fatal.
- :func:`episode_view` turns one episode record into turns of actions. An action is one assistant message with
  the tool messages that answered it. Beside each action: the checklist items it satisfied (the verdict's
  ``first_action``), their weight, what each item adds to R (``weight / variants / L``, when it was paid), the
  verdict source (rule, llm, cached, voted, ...) and what the action paid (the env's reward for that step).
  After each turn: its unsatisfied items with their question and pass condition. Items come from the episode's
  reward record; questions from the dataset when it is available.
- The numbers add up: over an episode, the actions' contributions (``action_rewards[t][k] / L``) sum to R, and
  so do the items' contributions with one checklist variant or the mean over several; under majority voting an
  item has no share of R of its own and none is shown. What the env paid after the last action (the settlement
  of a truncated episode) is shown apart. :func:`episode_view` reports the sums.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

from cm2_env.reward.items import normaliser


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """``(records, bad lines)`` of a JSON-lines file; a line that is not a JSON object is counted and skipped."""
    records, bad = [], 0
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(value, dict):
                records.append(value)
            else:
                bad += 1
    return records, bad


def load_run(folder: str | Path) -> dict[str, Any]:
    """The run's kind(s), episodes, step log, benchmark report and manifest (see the module docstring).
    Raises ``FileNotFoundError`` naming what a run folder holds when ``folder`` holds none of it."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder. Fix: give the --out folder of cm2 rollout, train or bench")
    train_dir = next((d for d in (root, root / "grpo") if (d / "metrics.jsonl").is_file()), None)
    run: dict[str, Any] = {"folder": str(root), "episodes": [], "metrics": [], "bench": None, "bad_lines": 0,
                           "manifest": _read_json(root / "run.json") or {}, "kinds": []}
    folders = dict.fromkeys([root, *([train_dir] if train_dir is not None else [])])  # ordered, no repeats
    for path in (folder / name for folder in folders for name in ("trajectories.jsonl", "rollouts.jsonl")):
        if path.is_file():
            records, bad = read_jsonl(path)
            run["episodes"] += records
            run["bad_lines"] += bad
    if run["episodes"]:
        run["kinds"].append("rollouts")
    if train_dir is not None:
        run["metrics"], bad = read_jsonl(train_dir / "metrics.jsonl")
        run["bad_lines"] += bad
        run["kinds"].append("training")
        run["config"] = _read_yaml(train_dir / "config.yaml")
    reports = sorted(root.glob("*_results.json"))
    if reports:
        run["bench"] = {"report": _read_json(reports[0]) or {}, "name": reports[0].stem,
                        "markdown": (reports[0].with_suffix(".md").read_text(encoding="utf-8")
                                     if reports[0].with_suffix(".md").is_file() else "")}
        if (root / "results.jsonl").is_file():
            run["bench"]["results"], bad = read_jsonl(root / "results.jsonl")
            run["bad_lines"] += bad
        run["kinds"].append("benchmark")
    if not run["kinds"]:
        raise FileNotFoundError(f"{root} holds no run: expected trajectories.jsonl (cm2 rollout), metrics.jsonl "
                                "(cm2 train, also under grpo/) or a *_results.json report (cm2 bench)")
    return run


def dataset_name(run: Mapping[str, Any]) -> str | None:
    """The dataset the run's episodes come from, as its manifest or config names it."""
    for source in (run.get("manifest") or {}, run.get("config") or {}):
        if isinstance(source.get("dataset"), str):
            return source["dataset"]
    return None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


# --- one episode ---------------------------------------------------------------------------------------------


def checklist_texts(dialogues: Iterable[Any]) -> dict[str, list[list[dict[str, dict[str, Any]]]]]:
    """Per dialogue id, per checklist variant, per turn: item id -> question, pass condition and focus."""
    return {dialogue.id: [[{item.id: {"question": item.question, "pass_condition": item.pass_condition,
                                      "focus": str(getattr(item.focus_on, "value", item.focus_on))}
                            for item in turn} for turn in variant] for variant in dialogue.checklists]
            for dialogue in dialogues}


def _turns(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(messages before the first user message, turns)`` by the one turn/action segmentation
    (:func:`cm2_env.data.turns.split_turns`); a turn is ``{"user", "actions": [{"assistant", "tools"}]}``."""
    from cm2_env.data.turns import split_turns

    messages = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    first_user = next((i for i, m in enumerate(messages) if m.get("role") == "user"), len(messages))
    turns = [{"user": turn.user, "actions": [{"assistant": a.assistant, "tools": list(a.tool_responses)}
                                             for a in turn.actions]} for turn in split_turns(messages)]
    return messages[:first_user], turns


def episode_view(record: Mapping[str, Any], texts: list[list[dict[str, dict[str, Any]]]] | None = None
                 ) -> dict[str, Any]:
    """One episode as ``cm2 view`` shows it (see the module docstring). ``texts``: the dialogue's
    :func:`checklist_texts` entry. Raises ``ValueError``/``TypeError``/``KeyError`` on a record it cannot read
    (the caller skips and counts it)."""
    reward_record = record.get("reward_record") or {}
    if not isinstance(reward_record, dict):
        raise TypeError("reward_record is not an object")
    record_turns = [t for t in reward_record.get("turns") or [] if isinstance(t, dict)]
    L = _divisor(reward_record, len(record_turns))
    verdicts = record.get("verdicts") if isinstance(record.get("verdicts"), list) else []
    payments = [float(r) for r in record.get("rewards") or []]
    lead, turns = _turns(record.get("messages"))
    action_rewards = reward_record.get("action_rewards") or []
    variants = _variants(record_turns)
    step = 0
    item_sum = action_sum = 0.0
    out_turns = []
    for t, turn in enumerate(turns):
        items = _turn_items(record_turns[t] if t < len(record_turns) else {},
                            verdicts[t] if t < len(verdicts) and isinstance(verdicts[t], dict) else {},
                            [variant[t] if t < len(variant) else {} for variant in texts or []], L)
        actions = []
        for k, action in enumerate(turn["actions"], start=1):
            contribution = _at(action_rewards, t, k - 1) / L if L else 0.0
            action_sum += contribution
            actions.append({**action, "index": k,
                            "paid": payments[step] if step < len(payments) else None,
                            "contribution": contribution,
                            "satisfied": [i for i in items if i["first_action"] == k]})
            step += 1
        item_sum += sum(i["contribution"] or 0.0 for i in items)
        out_turns.append({"index": t, "user": turn["user"], "actions": actions,
                          "unsatisfied": [i for i in items if not i["passed"]],
                          "reward": _at([reward_record.get("turn_rewards") or []], 0, t)})
    items_exact = variants == 1 or abs(item_sum - action_sum) < 1e-9
    if not items_exact:  # majority voting over variants: no item has a share of R of its own
        for turn in out_turns:
            for item in [i for a in turn["actions"] for i in a["satisfied"]] + turn["unsatisfied"]:
                item["contribution"] = None
    return {
        "dialogue_id": record.get("dialogue_id"), "group_index": record.get("group_index"),
        "step": record.get("step"), "R": record.get("R"), "failed": bool(record.get("failed")),
        "failure": record.get("failure"), "end_reason": record.get("end_reason"),
        "turns_reached": record.get("turns_reached"), "reference_turns": record.get("reference_turns"),
        "L": L, "lead": lead, "turns": out_turns, "usage": record.get("usage") or {},
        # what the env paid after the last action: the settlement of an episode ended from outside (truncation)
        "paid_after_actions": sum(payments[step:]) if len(payments) > step else None,
        "variants": variants,
        "sums": {"actions": action_sum, "items": item_sum if items_exact else None, "variants": variants},
    }


def _divisor(reward_record: Mapping[str, Any], reached: int) -> int:
    mode = reward_record.get("L", "reference")
    try:
        return normaliser(mode, int(reward_record.get("reference_turns") or reached), reached)
    except ValueError:
        return reached


def _at(rows: list[Any], t: int, k: int) -> float:
    try:
        return float(rows[t][k])
    except (IndexError, TypeError, ValueError):
        return 0.0


def _variants(record_turns: list[Mapping[str, Any]]) -> int:
    return max((len(turn.get("checklists") or []) for turn in record_turns), default=1) or 1


def _turn_items(record_turn: Mapping[str, Any], verdicts: Mapping[str, Any],
                texts: list[Mapping[str, Any]], L: int) -> list[dict[str, Any]]:
    """The turn's items (every variant's, in order), with their verdict, source and what each adds to R
    (weight / variants / L: exact for one variant and for the mean over variants; the caller drops it when the
    items do not add up, as under majority voting). With several variants the env keys verdicts ``v<k>.<id>``."""
    checklists = [c for c in record_turn.get("checklists") or [] if isinstance(c, dict)]
    n = len(checklists) or 1
    items = []
    for v, checklist in enumerate(checklists):
        paid = checklist.get("paid") if isinstance(checklist.get("paid"), dict) else {}
        first = checklist.get("first_satisfied") if isinstance(checklist.get("first_satisfied"), dict) else {}
        text = texts[v] if v < len(texts) and isinstance(texts[v], dict) else {}
        for item in checklist.get("items") or []:
            if not isinstance(item, dict):
                continue
            item_id = str(item.get("id"))
            verdict = verdicts.get(item_id if n == 1 else f"v{v}.{item_id}") or {}
            weight = float(item.get("weight") or 0.0)
            paid_at = paid.get(item_id)
            items.append({
                "id": item_id, "variant": v if n > 1 else None, "weight": weight,
                "dependence": list(item.get("dependence") or []),
                "passed": first.get(item_id) is not None,
                "first_action": first.get(item_id), "paid_at": paid_at,
                "contribution": weight / n / L if paid_at is not None and L else 0.0,
                "source": verdict.get("source") if isinstance(verdict, dict) else None,
                **{key: text[item_id][key] for key in ("question", "pass_condition", "focus")
                   if item_id in text and key in text[item_id]},
            })
    return items
