"""Prompt text of the annotation layer: the prompt files (``prompts/*.txt``) and dialogues rendered for the
annotator and the reviewer (LLM filter).

Contract: pure functions from a :class:`~cm2_env.data.models.Dialogue` to text. Every step is shown under a
header that names its turn, its step and the evidence source, followed by the *canonical rendering*
(:func:`cm2_env.data.turns.render`) verbatim, so an annotator can copy evidence snippets that then pass
``cm2 data validate``. A rendering longer than ``max_chars`` is cut and marked; a snippet copied across the
marker fails validation and is sent back for repair, which is the intended outcome.
"""

from __future__ import annotations

import json
from string import Template
from typing import Iterator

from cm2_env.data.models import Dialogue, Message
from cm2_env.data.turns import render, split_turns
from cm2_env.text import package_prompt, shorten

#: Evidence sources shown for an assistant step, in the order the model produced them.
ASSISTANT_SOURCES = ("assistant.content.thinking", "assistant.tool_calls", "assistant.content.user_visible_reply")
#: Asked of every JSON-answering prompt; a server that rejects it is retried without it by the client.
JSON_OBJECT = {"type": "json_object"}


def prompt_text(name: str) -> Template:
    """A prompt file of this package (``prompts/NAME.txt``)."""
    return package_prompt("cm2_env.annotate", name)


def render_tools(dialogue: Dialogue) -> str:
    """One block per tool: name, description and the JSON Schema of its parameters."""
    if not dialogue.tools:
        return "(no tools)"
    blocks = []
    for tool in dialogue.tools:
        schema = json.dumps(tool.function.parameters, ensure_ascii=False, sort_keys=True)
        blocks.append(f"- {tool.function.name}: {tool.function.description.strip() or '(no description)'}\n"
                      f"  parameters: {schema}")
    return "\n".join(blocks)


def render_dialogue(dialogue: Dialogue, max_chars: int = 4000) -> str:
    """The whole dialogue, turn by turn and step by step, with the canonical rendering of every source."""
    sections = []
    system = [m for m in dialogue.messages[:1] if m.role == "system"]
    if system:
        sections.append(f"=== system prompt (belongs to no turn) ===\n{shorten(system[0].text, max_chars)}")
    for turn in split_turns(dialogue.messages):
        lines = [f"=== turn {turn.index} ==="]
        for step, message in enumerate(turn.messages):
            for source, text in step_renderings(message):
                label = f"{source} [{message.name}]" if source == "tool.content" and message.name else source
                lines.append(f"--- turn {turn.index}, step {step}, {label} ---")
                lines.append(shorten(text, max_chars))
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def step_renderings(message: Message) -> Iterator[tuple[str, str]]:
    """``(source, rendering)`` for every non-empty evidence source of one message."""
    if message.role == "assistant":
        for source in ASSISTANT_SOURCES:
            text = render(message, source)
            if text:
                yield source, text
    elif message.role in ("user", "tool"):
        yield f"{message.role}.content", render(message, f"{message.role}.content")
