"""Integration: the LLM judge against a REAL vLLM CPU server with a tiny random model (garbage output).

Uses the session's vLLM server fixture (tests/conftest.py) (skipped when the vLLM CPU venv is absent). A random
model writes garbage, so the point is robustness: every item gets a verdict error, nothing raises.
"""

from __future__ import annotations

import asyncio

import pytest

from cm2_env.data import load_dialogues, split_turns
from cm2_env.judge import JudgeRequest, LLMChecklistJudge
from cm2_env.llm import make_client
from tests.conftest import SERVED_NAME

pytestmark = [pytest.mark.vllm_cpu, pytest.mark.slow]


def test_garbage_from_a_real_server_yields_verdict_errors_not_a_crash(vllm_server):
    dialogue = load_dialogues("tooltalk")[0]
    turn = split_turns(dialogue.messages)[0]
    request = JudgeRequest(dialogue, 0, 1, dialogue.checklist()[0], [],
                           [m.model_dump(mode="json", exclude_none=True) for m in turn.messages])
    client = make_client(f"openai:{vllm_server}#{SERVED_NAME}", role="judge", max_retries=0, timeout_s=120)
    judge = LLMChecklistJudge(client, batch_items=True, attempts=1, sampling={"max_tokens": 48})
    verdicts = asyncio.run(judge.judge(request))
    assert set(verdicts) == {item.id for item in dialogue.checklist()[0]}
    for verdict in verdicts.values():
        assert verdict.passed in (True, False, None)
        if verdict.passed is None:
            assert verdict.error
    assert judge.usage()["llm_calls"] == 1
