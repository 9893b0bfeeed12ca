"""Advantages laid onto an episode's policy segments (one segment = one agent action), for the trainer."""

from __future__ import annotations

from typing import Literal, Sequence, get_args

from cm2_env.reward.items import check_choice

AdvantageLevel = Literal["trajectory", "turn", "step"]
ADVANTAGE_LEVELS: tuple[str, ...] = get_args(AdvantageLevel)


def advantages_per_action(
    turn_action_counts: Sequence[int],
    advantages: float | Sequence[float] | Sequence[Sequence[float]] | None,
    level: AdvantageLevel,
) -> list[float] | None:
    """One advantage per agent action, in episode order, from a rollout's advantages at ``level``.

    ``turn_action_counts[t]`` = number of actions the rollout took in its t-th reached turn. ``advantages`` is,
    by level: "trajectory" -> A (Eq. 5), copied to every action; "turn" -> [A_t per reached turn] (Eq. 7),
    A_t copied to every action of turn t; "step" -> [[A per action] per reached turn] (Eq. 10), flattened.
    Returns None when ``advantages`` is None (a failed rollout, which the loss must skip). Raises ValueError when
    the shapes disagree with ``turn_action_counts``.
    """
    check_choice("level", level, ADVANTAGE_LEVELS)
    if advantages is None:
        return None
    if level == "trajectory":
        return [float(advantages)] * sum(turn_action_counts)  # type: ignore[arg-type]
    if len(advantages) != len(turn_action_counts):  # type: ignore[arg-type]
        raise ValueError(
            f"{level} advantages cover {len(advantages)} turns "  # type: ignore[arg-type]
            f"but the episode reached {len(turn_action_counts)}"
        )
    out: list[float] = []
    for t, (count, advantage) in enumerate(zip(turn_action_counts, advantages)):  # type: ignore[arg-type]
        if level == "turn":
            out.extend([float(advantage)] * count)  # type: ignore[arg-type]
            continue
        if len(advantage) != count:  # type: ignore[arg-type]
            raise ValueError(f"turn {t}: {len(advantage)} step advantages for {count} actions")  # type: ignore[arg-type]
        out.extend(float(a) for a in advantage)  # type: ignore[union-attr]
    return out
