"""Chat templates: the one template cm2 ships, and the ``chat_template`` option of a run.

:data:`CHAT_TEMPLATE` is a ChatML/Hermes template written for this project: tools are listed in the system turn as
JSON lines inside ``<tools></tools>``; calls are ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
blocks; consecutive tool responses are grouped into one user turn of ``<tool_response>`` blocks. It renders every
assistant message's content verbatim, ``<think>`` blocks included, in every turn: the "interleaved thinking" of
the CM2 paper (section 3.1), where the policy keeps reading its earlier turns' reasoning. Stock Qwen3 templates
drop the reasoning of earlier turns instead, so what the policy saw while sampling would not be what it sees
when it acts again.

:func:`resolve_chat_template` reads the ``chat_template`` option: ``""`` (the tokenizer's own template),
``"interleaved-thinking"`` (:data:`CHAT_TEMPLATE`) or the path of a Jinja file. SFT and GRPO apply it to the
tokenizer they load, so both train and sample with the same template (the tokenizer saved after SFT carries it).
"""

from __future__ import annotations

from pathlib import Path

_TEMPLATE_SOURCE = (
    "{% set msgs = messages %}"
    "{% if tools %}"
    "<|im_start|>system\n"
    "{% if msgs[0].role == 'system' %}{{ msgs[0].content }}\n\n{% endif %}"
    "# Tools\nYou can call these functions (JSON signatures inside <tools></tools>):\n<tools>"
    "{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n"
    "To call a function, write a JSON object with its name and arguments between <tool_call> and "
    "</tool_call>:\n<tool_call>\n{\"name\": <name>, \"arguments\": <arguments object>}\n</tool_call>"
    "<|im_end|>\n"
    "{% elif msgs[0].role == 'system' %}"
    "<|im_start|>system\n{{ msgs[0].content }}<|im_end|>\n"
    "{% endif %}"
    "{% for m in msgs %}"
    "{% if m.role == 'system' %}"
    "{% if not loop.first %}<|im_start|>system\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% elif m.role == 'user' %}"
    "<|im_start|>user\n{{ m.content }}<|im_end|>\n"
    "{% elif m.role == 'assistant' %}"
    "<|im_start|>assistant\n{{ m.content or '' }}"
    "{% for tc in (m.tool_calls or []) %}"
    "{% set f = tc.function if tc.function is defined else tc %}"
    "{% if (m.content or '') or not loop.first %}\n{% endif %}"
    "<tool_call>\n{\"name\": \"{{ f.name }}\", \"arguments\": "
    "{% if f.arguments is string %}{{ f.arguments }}{% else %}{{ f.arguments | tojson }}{% endif %}"
    "}\n</tool_call>"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% elif m.role == 'tool' %}"
    "{% if loop.first or msgs[loop.index0 - 1].role != 'tool' %}<|im_start|>user{% endif %}"
    "\n<tool_response>\n{{ m.content }}\n</tool_response>"
    "{% if loop.last or msgs[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# transformers renders chat templates with trim_blocks=True, which drops the newline right after a block tag:
# write such newlines as expressions so the rendered text is exactly what the template source shows.
CHAT_TEMPLATE = _TEMPLATE_SOURCE.replace("%}\n", "%}{{ '\\n' }}")



#: Names accepted by the ``chat_template`` option besides a file path.
NAMED_TEMPLATES: dict[str, str] = {"interleaved-thinking": CHAT_TEMPLATE}


def resolve_chat_template(option: str) -> str | None:
    """The Jinja source the ``chat_template`` option names, or None for the tokenizer's own template. Raises
    ValueError for an unknown name or a missing file, saying what is accepted."""
    if not option:
        return None
    if option in NAMED_TEMPLATES:
        return NAMED_TEMPLATES[option]
    path = Path(option)
    if path.suffix in (".jinja", ".j2", ".txt") and path.is_file():
        return path.read_text(encoding="utf-8")
    raise ValueError(f"chat_template {option!r} is neither {', '.join(repr(n) for n in NAMED_TEMPLATES)} nor an "
                     "existing .jinja file. Fix: use '' (the tokenizer's own), 'interleaved-thinking', or a path")
