"""ReplayAgent: plays the reference dialogue's own actions.

It is the upper bound of a checklist (the reference was written to pass it, except where a checklist
deliberately rejects a reference mistake) and a sanity check of checklists, simulators and judges: with the
replay simulator every call it makes is answered with the recorded response.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from agents.base import AgentStep
from cm2_env.data import Dialogue, dialogue_turns
from cm2_env.toolcalls import render_message_hermes


class ReplayAgent:
    """Replays reference actions; needs ``context`` with ``dialogue_id``, ``turn`` and ``action`` (actions taken
    so far in the turn), as the environment's ``info`` provides. Past the reference's actions of a turn it
    repeats the turn's final reply."""

    def __init__(self, dialogues: Iterable[Dialogue]):
        self._turns = {d.id: dialogue_turns(d) for d in dialogues}

    async def act(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        context: Mapping[str, Any] | None = None,
    ) -> AgentStep:
        if not context or context.get("dialogue_id") not in self._turns:
            raise ValueError(
                "ReplayAgent needs context={'dialogue_id', 'turn', 'action'} naming a dialogue it was given "
                "(pass the environment's info as context)"
            )
        turns = self._turns[context["dialogue_id"]]
        turn = turns[min(int(context.get("turn", 0)), len(turns) - 1)]
        taken = int(context.get("action", 0))
        reference = turn.actions[min(taken, len(turn.actions) - 1)].assistant
        text = render_message_hermes(reference)
        message = reference.model_dump(mode="json", exclude_none=True)
        return AgentStep(text=text, message=message)
