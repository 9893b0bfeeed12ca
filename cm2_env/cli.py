"""The ``cm2`` command line.

Every sub-command lives next to the code it drives and is imported only when it is invoked, so
``cm2 data stats`` never pays for importing torch, and ``cm2_env`` never imports ``agents``, ``train`` or
``benchmarks`` at module level (DESIGN.md, layers).
"""

from __future__ import annotations

import importlib

import click

# command name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "data": "cm2_env.data.cli:data",
    "reward": "cm2_env.reward_cli:reward",
    "judge": "cm2_env.judge.cli:judge",
    "rollout": "agents.cli:rollout",
    "sft": "train.cli:sft",
    "train": "train.cli:train",
    "bench": "benchmarks.cli:bench",
}

HELP: dict[str, str] = {
    "data": "Validate, filter and describe dialogue datasets.",
    "reward": "Compute checklist rewards and group advantages (paper Eq. 1-10).",
    "judge": "Evaluate checklist judges against gold verdicts.",
    "rollout": "Run a policy in CM2ToolUse-v0 and write trajectories.",
    "sft": "Cold-start supervised fine-tuning on dialogues.",
    "train": "GRPO with checklist rewards (e.g. --preset tiny-cpu).",
    "bench": "Run a policy on external benchmarks (BFCL v4, ...).",
}


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return _unavailable(cmd_name, f"{module_name} is not part of this installation yet")
            raise
        return getattr(module, attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing must not import every sub-command (torch, transformers): use the static help lines.
        with formatter.section("Commands"):
            formatter.write_dl([(name, HELP[name]) for name in self.list_commands(ctx)])


def _unavailable(name: str, why: str) -> click.Command:
    @click.command(name=name, help=f"(unavailable: {why})", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        raise click.ClickException(f"`cm2 {name}` is unavailable: {why}")

    return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cm2")
def main() -> None:
    """cm2: RL for tool-using LLM agents with checklist rewards (CM2, arXiv 2602.12268)."""


if __name__ == "__main__":
    main()
