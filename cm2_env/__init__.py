"""cm2_env: the CM2 tool-use environment package (data, LLM access, simulator, judge, reward math, env)."""

from cm2_env.data import load_dialogues

__all__ = ["load_dialogues"]
__version__ = "0.1.0"
