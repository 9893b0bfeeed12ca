"""cm2_env: the CM2 tool-use environment package (data, LLM access, simulator, judge, reward math, env)."""

from cm2_env.data import load_dialogues

__all__ = ["load_dialogues"]
__version__ = "0.1.0"


def _register_envs() -> None:
    """Register CM2ToolUse-v0 (lazily: the env module is imported only when an env is made)."""
    from gymnasium.envs.registration import register, registry

    if "CM2ToolUse-v0" not in registry:
        register(id="CM2ToolUse-v0", entry_point="cm2_env.env:CM2ToolUseEnv",
                 vector_entry_point="cm2_env.vector:CM2VectorEnv")


_register_envs()
