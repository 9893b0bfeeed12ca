"""NoisyJudge: a judge whose verdicts are flipped at a known rate -- judge noise as a controlled variable.

``NoisyJudge(inner, p, seed=0)`` asks ``inner`` and inverts its verdict on an item with probability ``p``. The
draw is made once per item and turn of an episode, not per request: it is a pure function of ``(seed, dialogue,
turn, item, the episode so far up to and including the turn's first action)``, and the same inversion applies
at every action of the turn. So each item's verdict for the turn is wrong with probability p (with sticky
verdicts: a not-done item is passed at once, a done item is never passed), however many actions the turn has
-- padding a turn with extra actions buys no extra chances of a false pass. Episodes that differ before or in
their first action of the turn draw independently (group members sample different first actions); identical
ones draw alike. The same request always gets the same answer, whatever the concurrency. Undecided verdicts
stay undecided (they fail the episode as before). Flipped verdicts keep the inner judge's source and say
``details["flipped"]``. Spec form ``noisy:P:JUDGE`` (e.g. ``noisy:0.05:rule``; option ``noise_seed``; the trainer
passes the run's seed). It measures how a training set-up copes with judge errors (docs/judges.md); it is never
a judge to train with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from cm2_env.data.turns import split_actions
from cm2_env.judge.base import ChecklistJudge, JudgeRequest, Verdict


class NoisyJudge:
    """``inner`` with each item's verdict for a turn inverted with probability ``p`` (module docstring)."""

    def __init__(self, inner: ChecklistJudge, p: float, seed: int = 0):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"the flip probability must be in [0, 1], got {p!r}. Fix: e.g. noisy:0.05:rule")
        self.inner, self.p, self.seed = inner, float(p), int(seed)
        self._flipped = 0
        self._decided = 0

    def flips(self, request: JudgeRequest, item_id: str) -> bool:
        """Whether ``item_id``'s verdict is inverted in this request's turn of this episode."""
        actions = split_actions(list(request.current))
        first_action = [dict(m) for m in actions[0].messages[:1]] if actions else []
        key = json.dumps([self.seed, request.dialogue.id, request.turn, item_id, list(request.history),
                          dict(request.current[0]) if request.current else None, first_action],
                         sort_keys=True, ensure_ascii=False, default=str)
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
