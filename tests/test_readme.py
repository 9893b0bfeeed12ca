"""The README's Python snippets run as written, and the example action is a call the environment answers."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_python_snippet_of_the_readme_runs_and_its_tool_call_gets_a_recorded_answer():
    snippets = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert snippets
    for snippet in snippets:
        scope: dict = {}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(snippet, str(README), "exec"), scope)  # our own documentation, not model output
        info = scope.get("info")
        if info is not None and "messages" in info:
            answer = json.loads(info["messages"][-1]["content"])
            assert "error" not in answer and answer.get("exception") is None, answer
            assert any(v["passed"] for v in info["verdicts"][0].values())
