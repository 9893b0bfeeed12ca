"""Hostile actions never break the environment: 10,000 fuzzed actions (text, unicode garbage with lone
surrogates, tool-call-shaped JSON, 1 MB blobs) raise nothing, and a 1 MB action completes."""

from __future__ import annotations

import json

import gymnasium as gym
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import cm2_env  # noqa: F401  (registers CM2ToolUse-v0)

TOOLS = ["QueryCalendar", "CreateEvent", "SendEmail", "NoSuchTool", "", "<tool_call>"]
GARBAGE = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None), max_size=80)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | GARBAGE
ARGUMENT_VALUES = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(GARBAGE, SCALARS, max_size=3)
CALLS = st.builds(lambda name, arguments, close: "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments})
                  + ("\n</tool_call>" if close else ""),
                  st.sampled_from(TOOLS) | GARBAGE, st.dictionaries(GARBAGE, ARGUMENT_VALUES, max_size=4),
                  st.booleans())
ACTIONS = st.one_of(st.text(max_size=300), GARBAGE, CALLS, st.lists(CALLS, min_size=2, max_size=4).map("\n".join),
                    st.builds(lambda t: f"<think>{t}", GARBAGE), st.sampled_from(["", " ", "</tool_call>", "<think>"]))
BIG = 1_000_000


@pytest.fixture(scope="module")
def env():
    environment = gym.make("CM2ToolUse-v0")
    environment.reset(seed=0)
    yield environment
    environment.close()


@pytest.mark.slow
@settings(max_examples=10_000, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(action=ACTIONS)
@example(action="x" * BIG)
@example(action="\ud800" * BIG)
@example(action='<tool_call>\n{"name": "SendEmail", "arguments": {"body": "' + "y" * BIG + '"}}\n</tool_call>')
def test_ten_thousand_fuzzed_actions_raise_nothing(env, action):
    observation, reward, terminated, truncated, info = env.step(action)
    assert isinstance(observation, str) and isinstance(reward, float) and not info["failed"]
    if terminated or truncated:
        env.reset()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("action", [
    "z" * BIG,
    "1a-" * (BIG // 3),
    "Your meeting is at 10:30 am on 2023-09-12 with bob@example.com. " * (BIG // 64),
    '<tool_call>\n{"name": "SendEmail", "arguments": {"to": ["a@b.c"], "subject": "s", "body": "'
    + "lorem 12:30 ipsum-9x " * (BIG // 21) + '"}}\n</tool_call>',
])
def test_a_one_megabyte_action_completes_when_the_action_space_allows_it(action):
    env = gym.make("CM2ToolUse-v0", max_action_length=2 * BIG)
    env.reset(seed=1)
    _, reward, _, _, info = env.step(action)
    assert not info["failed"] and "action_clipped" not in info and isinstance(reward, float)
    env.close()
