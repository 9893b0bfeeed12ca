"""Checklist variants: judge each variant of a turn's checklist and aggregate the item verdicts.

A dialogue may carry several checklist variants (docs/data_format.md). ``judge_variants`` asks the judge about the
same transcript once per variant; ``aggregate_verdicts`` combines the verdicts of items that share an id:
"majority" (strict majority of the decided verdicts; errors only when no variant decided) or "all"/"any".
Reward-level aggregation across variants (mean of rewards) lives in ``cm2_env.reward.variants``.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Literal, Sequence

from cm2_env.judge.base import ChecklistJudge, JudgeRequest, Verdict

Aggregation = Literal["majority", "all", "any"]


async def judge_variants(judge: ChecklistJudge, request: JudgeRequest,
                         variants: Sequence[int] | None = None) -> list[dict[str, Verdict]]:
    """One verdict dict per variant of ``request.dialogue`` for ``request.turn`` (all items of each variant that
    ``request.items`` names by id; every item of the variant when ``request.items`` is empty)."""
    wanted = {item.id for item in request.items}
    chosen = range(len(request.dialogue.checklists)) if variants is None else variants
    requests = []
    for v in chosen:
        turn_items = request.dialogue.checklist(v)[request.turn] if request.turn < len(
            request.dialogue.checklist(v)) else []
        items = [item for item in turn_items if not wanted or item.id in wanted]
        requests.append(replace(request, items=items))
    return list(await asyncio.gather(*(judge.judge(r) for r in requests)))


def aggregate_verdicts(per_variant: Sequence[dict[str, Verdict]], how: Aggregation = "majority") -> dict[str, Verdict]:
    """Combine verdicts by item id; ``agreement`` becomes the share of deciding variants that agree."""
    ids = list(dict.fromkeys(i for verdicts in per_variant for i in verdicts))
    out = {}
    for item_id in ids:
        verdicts = [v[item_id] for v in per_variant if item_id in v]
        decided = [v.passed for v in verdicts if v.passed is not None]
        if not decided:
            errors = "; ".join(sorted({v.error or "no verdict" for v in verdicts}))
            out[item_id] = Verdict(item_id, None, verdicts[0].source, error=errors)
            continue
        yes = sum(decided)
        passed = {"majority": yes * 2 > len(decided), "all": yes == len(decided), "any": yes > 0}[how]
        out[item_id] = Verdict(item_id, passed, verdicts[0].source,
                               agreement=max(yes, len(decided) - yes) / len(decided),
                               details={"variants": len(decided), "yes": yes})
    return out
