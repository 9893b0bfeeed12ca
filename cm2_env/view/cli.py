"""``cm2 view RUN_DIR``: the HTML report of a rollout, training or benchmark run (cm2_env.view)."""

from __future__ import annotations

import time
from pathlib import Path

import click


@click.command("view")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the report [default: RUN_DIR/report.html].")
@click.option("--serve", is_flag=True, help="Serve the report over HTTP on loopback and print its URL (for remote "
                                            "machines: forward the port) until Ctrl-C.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port for --serve (0: any free port).")
def view(run_dir: Path, out: Path | None, serve: bool, port: int) -> None:
    """Write one self-contained HTML file (no network needed) showing RUN_DIR's episodes with their checklist
    verdicts, the training curves, and the benchmark report."""
    from cm2_env.view import build_report, serve_file

    started = time.perf_counter()
    out = out or run_dir / "report.html"
    stats = build_report(run_dir, out)
    click.echo(f"{out}: {stats['episodes']} episodes, {stats['steps']} training steps, "
               f"{stats['bytes'] / 1e6:.2f} MB, built in {time.perf_counter() - started:.1f} s", err=True)
    for note in stats["notes"]:
        click.echo(f"note: {note}", err=True)
    if serve:
        serve_file(out, port, announce=lambda url: click.echo(f"serving {out} at {url} (Ctrl-C stops)", err=True))
