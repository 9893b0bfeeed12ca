"""The ``cm2`` command line.

Every sub-command lives next to the code it drives and is imported only when it is invoked, so
``cm2 data stats`` never pays for importing torch, and ``cm2_env`` never imports ``agents``, ``train`` or
``benchmarks`` at module level (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import click

# command name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "data": "cm2_env.data.cli:data",
    "reward": "cm2_env.reward_cli:reward",
    "judge": "cm2_env.judge.cli:judge",
    "rollout": "agents.cli:rollout",
    "serve": "agents.cli:serve",
    "sft": "train.cli:sft",
    "train": "train.cli:train",
    "bench": "benchmarks.cli:bench",
    "view": "cm2_env.view.cli:view",
}

HELP: dict[str, str] = {
    "data": "Validate, filter and describe dialogue datasets.",
    "reward": "Compute checklist rewards and group advantages (paper Eq. 1-10).",
    "judge": "Evaluate checklist judges against gold verdicts.",
    "rollout": "Run a policy in CM2ToolUse-v0 and write trajectories.",
    "serve": "Serve a policy as an OpenAI-compatible chat endpoint.",
    "sft": "Cold-start supervised fine-tuning on dialogues.",
    "train": "GRPO with checklist rewards (e.g. --preset tiny-cpu).",
    "bench": "Run a policy on external benchmarks (BFCL v4, tau2-bench, ToolSandbox).",
    "view": "An HTML report of a run: transcripts beside their checklist verdicts, curves.",
}


#: Errors of this kind mean the command was given bad input: one line, exit status 2 (as click's usage errors).
USAGE_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, LookupError, OSError)


class LazyGroup(click.Group):
    """A click group whose sub-commands are imported on first use, and whose failures print one line.

    A sub-command's exception becomes ``cm2 <command>: error: <message>`` on stderr -- exit status 2 for bad input
    (:data:`USAGE_ERRORS`: a missing file, a bad spec or value), 1 for anything else -- unless ``--debug`` (or
    ``CM2_DEBUG=1``) asks for the full traceback.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - the CLI's one place that turns errors into one line
            if (ctx.obj or {}).get("debug") or os.environ.get("CM2_DEBUG") == "1":
                raise
            name = ctx.invoked_subcommand or "cm2"
            message = " ".join(str(exc).split()) or type(exc).__name__
            if isinstance(exc, OSError) and getattr(exc, "filename", None) and str(exc.filename) not in message:
                message = f"{exc.filename}: {message}"
            click.echo(f"cm2 {name}: error: {message} (--debug shows the traceback)", err=True)
            ctx.exit(2 if isinstance(exc, USAGE_ERRORS) else 1)

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
@click.option("--debug", is_flag=True, help="Show the full traceback when a command fails.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """cm2: RL for tool-using LLM agents with checklist rewards (CM2, arXiv 2602.12268)."""
    ctx.obj = {"debug": debug}


if __name__ == "__main__":
    main()
