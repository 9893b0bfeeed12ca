"""Pydantic v2 models of the CM2 dialogue format (docs/data_format.md).

A :class:`Dialogue` is one JSONL record: OpenAI function ``tools``, OpenAI chat ``messages`` and optional
``checklists`` (a list of variants; a variant holds one list of :class:`ChecklistItem` per turn).

Input is accepted liberally where the format allows it (``uuid`` as an alias of ``id``, tool-call ``arguments``
as a dict, a single checklist variant without the outer list) and always written back in the canonical form
(``arguments`` as a JSON string, ``checklists`` as a list of variants). Unknown keys are kept, so a record
round-trips without losing fields this project does not interpret.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

Role = Literal["system", "user", "assistant", "tool"]

#: Where evidence can point (``evidence[].from``).
EVIDENCE_SOURCES: tuple[str, ...] = (
    "user.content",
    "assistant.content.thinking",
    "assistant.content.user_visible_reply",
    "assistant.tool_calls",
    "tool.content",
)
#: What an item can focus on (``focus_on``): the non-user sources.
FOCUS_VALUES: tuple[str, ...] = EVIDENCE_SOURCES[1:]

EvidenceSource = Literal[
    "user.content",
    "assistant.content.thinking",
    "assistant.content.user_visible_reply",
    "assistant.tool_calls",
    "tool.content",
]
Focus = Literal[
    "assistant.content.thinking",
    "assistant.content.user_visible_reply",
    "assistant.tool_calls",
    "tool.content",
]


class _Record(BaseModel):
    """Base: keep unknown keys (round-trip), accept field names and aliases."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class FunctionSpec(_Record):
    """``tools[].function``: a function the assistant may call; ``parameters`` is a JSON Schema object."""

    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(_Record):
    """An OpenAI function tool."""

    type: Literal["function"] = "function"
    function: FunctionSpec

    @property
    def name(self) -> str:
        return self.function.name


class FunctionCall(_Record):
    """``tool_calls[].function``. ``arguments`` is kept as the JSON string the assistant produced."""

    name: str
    arguments: str = "{}"

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_as_string(cls, value: Any) -> Any:
        if isinstance(value, (dict, list)):
            return json.dumps(value, ensure_ascii=False)
        if value is None:
            return "{}"
        return value

    def parsed_arguments(self) -> Any:
        """The decoded arguments, or ``None`` when ``arguments`` is not valid JSON."""
        try:
            return json.loads(self.arguments) if self.arguments.strip() else {}
        except (json.JSONDecodeError, AttributeError):
            return None


class ToolCall(_Record):
    """One call inside an assistant message."""

    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall

    @property
    def name(self) -> str:
        return self.function.name


class Message(_Record):
    """An OpenAI chat message (system, user, assistant or tool)."""

    role: Role
    content: str | None = ""
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content_none_is_empty(cls, value: Any) -> Any:
        return "" if value is None else value

    @property
    def text(self) -> str:
        return self.content or ""

    @property
    def calls(self) -> list[ToolCall]:
        return list(self.tool_calls or [])


class Evidence(_Record):
    """A pointer into the reference trajectory that an item was written from."""

    turn: int = Field(ge=0)
    step: int = Field(ge=0)
    from_: EvidenceSource = Field(alias="from")
    snippet: str


class ChecklistItem(_Record):
    """One binary, evidence-grounded checklist item of a turn (paper: gamma_{t,c})."""

    id: str = Field(min_length=1)
    evidence: list[Evidence] = Field(default_factory=list)
    focus_on: Focus
    question: str
    pass_condition: str = ""
    failure_examples: list[str] = Field(default_factory=list)
    required_for_next_turn: StrictBool = False
    dependence: list[str] = Field(default_factory=list)
    weight: float = Field(ge=0.0, le=1.0)


TurnChecklist = list[ChecklistItem]
ChecklistVariant = list[TurnChecklist]


class Dialogue(_Record):
    """One reference dialogue with its tools and checklist variants."""

    id: str = Field(min_length=1)
    tools: list[Tool] = Field(default_factory=list)
    messages: list[Message]
    checklists: list[ChecklistVariant] = Field(default_factory=list)
    source: str | None = None
    license: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalise_input(cls, data: Any) -> Any:
        return normalise_record(data) if isinstance(data, dict) else data

    @property
    def tool_names(self) -> list[str]:
        return [tool.function.name for tool in self.tools]

    def tool(self, name: str) -> Tool | None:
        for tool in self.tools:
            if tool.function.name == name:
                return tool
        return None

    def checklist(self, variant: int = 0) -> ChecklistVariant:
        """The per-turn item lists of one checklist variant (empty list when the dialogue has none)."""
        return self.checklists[variant] if self.checklists else []

    def to_record(self) -> dict[str, Any]:
        """The canonical JSON record (aliases, no ``None`` fields, ``arguments`` as strings)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def normalise_record(data: dict[str, Any]) -> dict[str, Any]:
    """The input aliases of the format resolved (a shallow copy): ``uuid`` -> ``id``, ``checklist`` ->
    ``checklists``, a single variant wrapped into the list of variants, an integer id as a string."""
    data = dict(data)
    if "id" not in data and "uuid" in data:
        data["id"] = data.pop("uuid")
    if "checklists" not in data and "checklist" in data:
        data["checklists"] = data.pop("checklist")
    checklists = data.get("checklists")
    if checklists is not None and _looks_like_single_variant(checklists):
        data["checklists"] = [checklists]
    if isinstance(data.get("id"), int):
        data["id"] = str(data["id"])
    return data


def _looks_like_single_variant(checklists: Any) -> bool:
    """True for ``[[item, ...], ...]`` (one variant: turns of items) instead of ``[[[item, ...], ...], ...]``."""
    if not isinstance(checklists, list) or not checklists:
        return False
    for turn in checklists:
        if not isinstance(turn, list):
            return False
        for entry in turn:
            return isinstance(entry, dict)
    return False
