"""One spec grammar for policies, simulators and judges (cm2_env.specs), and one error family (SpecError)."""

from __future__ import annotations

import asyncio
import sys

import pytest
from click.testing import CliRunner

from agents import EndpointAgent, ReplayAgent, make_agent
from cm2_env.backends import build_backends
from cm2_env.cli import main
from cm2_env.data import load_dialogues
from cm2_env.errors import SpecError
from cm2_env.judge import HybridJudge, LLMChecklistJudge, RuleJudge, make_judge
from cm2_env.llm import LLMConfigError
from cm2_env.simulator import HybridToolSimulator, make_simulator
from cm2_env.specs import ROLES, parse
from train.config import ConfigError, load_config

URL = "http://127.0.0.1:9/v1"  # never contacted: building a client opens no connection


@pytest.mark.parametrize("provider", ["openai", "vllm", "sglang"])
def test_one_endpoint_spec_names_a_policy_a_simulator_and_a_judge_alike(provider):
    spec = f"{provider}:{URL}#some-model"
    built = [make_agent(spec), make_simulator(spec), make_judge(spec), make_judge("hybrid:" + spec)]
    assert [type(b) for b in built] == [EndpointAgent, HybridToolSimulator, LLMChecklistJudge, HybridJudge]
    assert built[0].client.spec.provider == provider and built[1].client.spec.model == "some-model"
    for backend in built:
        asyncio.run(backend.aclose())


@pytest.mark.parametrize("role, text", [
    ("simulator", "rule"), ("simulator", "probe:negated"), ("simulator", "hf:some/folder"),
    ("judge", "replay"), ("judge", "oracle"), ("judge", "pkg.mod:judge"),
    ("policy", "rule"), ("policy", "noop"), ("policy", "hybrid:openai:http://h:1/v1#m"),
    ("bench", "replay"), ("bench", "probe:negated"),
    ("policy", "gpt-4"), ("judge", "rulee"), ("simulator", ""), ("judge", "   "),
])
def test_a_form_a_role_does_not_take_is_a_spec_error_listing_what_it_does_take(role, text):
    with pytest.raises(SpecError) as error:
        parse(text, role)
    message = str(error.value)
    assert "Fix: use" in message
    first_form = {"policy": "'replay'", "bench": "'oracle'", "simulator": "'replay'", "judge": "'rule'"}[role]
    assert first_form in message.split("Fix: use", 1)[1]


def test_every_role_accepts_every_form_it_lists():
    examples = {"replay": "replay", "rule": "rule", "endpoint": f"openai:{URL}#m", "hybrid": f"hybrid:openai:{URL}#m",
                "hf": "hf:runs/x", "probe": "probe:negated", "oracle": "oracle", "noop": "noop",
                "python": "pkg.module:attribute", "noisy": "noisy:0.05:rule"}
    for role, kinds in ROLES.items():
        for kind in kinds:
            assert parse(examples[kind], role).kind == kind
        for kind in set(examples) - set(kinds):
            with pytest.raises(SpecError):
                parse(examples[kind], role)


def test_bad_endpoint_specs_and_unknown_options_are_one_error_family():
    assert issubclass(LLMConfigError, SpecError) and issubclass(SpecError, ValueError)
    cases = [
        lambda: make_judge("openai:ftp://host#m"),                      # not an http(s) URL
        lambda: make_judge("openai:http://u:SECRET@host/v1#m"),          # credentials in the spec
        lambda: make_simulator("replay", fewshots="all"),                # misspelt option
        lambda: make_judge("rule", vote=3),                              # misspelt option
        lambda: make_agent("replay", temperature=0.5),                   # an option the agent never takes
        lambda: make_agent("probe:negatd"),                              # unknown probe kind
        lambda: build_backends(RuleJudge(), "rule"),                      # a judge object where a simulator goes
        lambda: build_backends("replay", RuleJudge(), judge_options={"votes": 3}),  # options for an object
    ]
    for case in cases:
        with pytest.raises(SpecError) as error:
            case()
        assert "SECRET" not in str(error.value) and "Fix" in str(error.value)


def test_a_python_agent_is_loaded_from_module_and_attribute(tmp_path, monkeypatch):
    (tmp_path / "my_agents_mod.py").write_text(
        "class Echo:\n"
        "    async def act(self, messages, tools, context=None):\n"
        "        return 'hello'\n"
        "def factory():\n"
        "    return Echo()\n"
        "not_an_agent = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert type(make_agent("my_agents_mod:Echo")).__name__ == "Echo"
    assert type(make_agent("my_agents_mod:factory")).__name__ == "Echo"
    with pytest.raises(SpecError, match="is not an agent"):
        make_agent("my_agents_mod:not_an_agent")
    with pytest.raises(SpecError, match="cannot load the agent"):
        make_agent("my_agents_mod:missing")
    sys.modules.pop("my_agents_mod", None)


def test_replay_still_builds_the_reference_policy():
    assert isinstance(make_agent("replay", load_dialogues("tooltalk")[:2]), ReplayAgent)


def test_a_training_config_with_a_bad_judge_or_simulator_fails_at_load_naming_file_line_and_fix(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: some/folder\nsimulator: rule\njudge: hybrid:rule\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    message = str(error.value)
    assert f"{path}:2: field 'simulator'" in message and "cannot be a simulator" in message
    assert f"{path}:3: field 'judge'" in message and "openai:URL#MODEL" in message


def test_the_command_line_reports_a_bad_spec_in_one_line():
    for args, expected in ((["--agent", "gpt-4"], "policy spec 'gpt-4' is not understood"),
                           (["--agent", "vllm"], "invalid LLM spec 'vllm': no model name"),
                           (["--judge", "replay"], "judge spec 'replay' (replay) cannot be a judge")):
        result = CliRunner().invoke(main, ["rollout", *args, "--limit", "1"])
        assert result.exit_code == 2
        assert result.output.strip().count("\n") == 0 and expected in result.output
