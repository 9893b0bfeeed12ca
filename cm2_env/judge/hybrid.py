"""HybridJudge: rule verdicts where the rule judge is confident, LLM verdicts otherwise.

Contract: for each requested item the :class:`RuleJudge` decides first; if its confidence
(``details["confidence"]``) is at least ``threshold`` the rule verdict stands, otherwise the item goes to the LLM
judge (in one request when the LLM judge batches). ``usage()`` adds ``rule_items`` (decided by rules),
``llm_items`` (sent to the LLM) and ``llm_items_saved`` (items that a pure LLM judge would have asked about).
Never raises (both parts never raise).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cm2_env.judge.base import ChecklistJudge, JudgeRequest, Verdict
from cm2_env.judge.rule import RuleJudge


class HybridJudge:
    name = "hybrid"

    def __init__(self, llm: ChecklistJudge, *, rule: RuleJudge | None = None, threshold: float = 0.85) -> None:
        self.llm = llm
        self.rule = rule or RuleJudge()
        self.threshold = threshold
        self._counts = {"rule_items": 0, "llm_items": 0}

    async def judge(self, request: JudgeRequest) -> dict[str, Verdict]:
        rule_verdicts = await self.rule.judge(request)
        out: dict[str, Verdict] = {}
        unsure = []
        for item in request.items:
            verdict = rule_verdicts.get(item.id)
            if verdict is not None and verdict.passed is not None and \
                    float(verdict.details.get("confidence", 0.0)) >= self.threshold:
                out[item.id] = verdict
                self._counts["rule_items"] += 1
            else:
                unsure.append(item)
        if unsure:
            self._counts["llm_items"] += len(unsure)
            llm_verdicts = await self.llm.judge(replace(request, items=unsure))
            for item in unsure:
                out[item.id] = llm_verdicts.get(item.id) or Verdict(item.id, None, "llm", error="no verdict")
        return out

    async def aclose(self) -> None:
        """Close the LLM judge (and so the client it owns)."""
        closer = getattr(self.llm, "aclose", None)
        if closer is not None:
            await closer()

    def usage(self) -> dict[str, Any]:
        llm = self.llm.usage()
        return {**llm, **self._counts, "llm_items_saved": self._counts["rule_items"]}
