"""NoisyJudge: a judge whose verdicts are flipped at a known rate -- judge noise as a controlled variable.

``NoisyJudge(inner, p, seed=0)`` asks ``inner`` and flips each decided verdict (passed <-> not passed) with
probability ``p``. A flip is a pure function of ``(seed, dialogue, turn, action, item, the current turn's
messages)``: the same request always gets the same answer, whatever the concurrency or the order of requests,
and two episodes that differ anywhere in the turn draw independently. Undecided verdicts stay undecided (they
fail the episode as before). Flipped verdicts keep the inner judge's source and say ``details["flipped"]``.
Spec form: ``noisy:P:JUDGE`` (e.g. ``noisy:0.05:rule``; option ``noise_seed``). It measures how a training set-up
copes with judge errors (the Figure 3 study, docs/studies/figure3.md); it is never a judge to train with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from cm2_env.judge.base import ChecklistJudge, JudgeRequest, Verdict


class NoisyJudge:
    def __init__(self, inner: ChecklistJudge, p: float, seed: int = 0):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"the flip probability must be in [0, 1], got {p!r}")
        self.inner, self.p, self.seed = inner, float(p), int(seed)
        self._flipped = 0
        self._decided = 0

    def flips(self, request: JudgeRequest, item_id: str) -> bool:
        """Whether this request's verdict on ``item_id`` is flipped (deterministic, see the module docstring)."""
        key = json.dumps([self.seed, request.dialogue.id, request.turn, request.action, item_id,
                          list(request.current)], sort_keys=True, ensure_ascii=False, default=str)
        draw = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") / 2.0 ** 64
        return draw < self.p

    async def judge(self, request: JudgeRequest) -> dict[str, Verdict]:
        verdicts = await self.inner.judge(request)
        out = dict(verdicts)
        for item_id, verdict in verdicts.items():
            if not isinstance(getattr(verdict, "passed", None), bool):
                continue
            self._decided += 1
            if self.flips(request, item_id):
                self._flipped += 1
                out[item_id] = dataclasses.replace(verdict, passed=not verdict.passed,
                                                   details={**verdict.details, "flipped": True})
        return out

    def usage(self) -> dict[str, Any]:
        return {**self.inner.usage(), "noise": {"p": self.p, "decided": self._decided, "flipped": self._flipped}}

    async def aclose(self) -> None:
        closer = getattr(self.inner, "aclose", None)
        if closer is not None:
            await closer()
