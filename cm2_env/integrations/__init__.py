"""Bridges from ``CM2ToolUse-v0`` to other training libraries (each needs its extra: ``pip install cm2[trl]``).

- :mod:`cm2_env.integrations.trl`: TRL's ``GRPOTrainer`` through its ``environment_factory`` interface.
"""
