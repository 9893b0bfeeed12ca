"""The data layer: dialogue/checklist models, file I/O, turn/step segmentation and renderings."""

from cm2_env.data.io import BUNDLED, DatasetError, Problem, load_dialogues, write_dialogues
from cm2_env.data.models import (
    EVIDENCE_SOURCES,
    FOCUS_VALUES,
    ChecklistItem,
    Dialogue,
    Evidence,
    FunctionCall,
    FunctionSpec,
    Message,
    Tool,
    ToolCall,
)
from cm2_env.data.turns import Action, Turn, dialogue_turns, render, render_tool_calls, split_actions, split_think, split_turns

__all__ = [
    "BUNDLED", "DatasetError", "Problem", "load_dialogues", "write_dialogues",
    "EVIDENCE_SOURCES", "FOCUS_VALUES", "ChecklistItem", "Dialogue", "Evidence", "FunctionCall", "FunctionSpec",
    "Message", "Tool", "ToolCall",
    "Action", "Turn", "dialogue_turns", "render", "render_tool_calls", "split_actions", "split_think", "split_turns",
]
