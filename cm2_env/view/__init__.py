"""``cm2 view``: read a run folder and write one self-contained HTML report (docs/viewing.md).

- :mod:`cm2_env.view.assemble`: the data (episodes with verdicts placed on actions, what each paid).
- :mod:`cm2_env.view.html`: the HTML document (inline curves, lazily decompressed episodes, no network).
"""

from __future__ import annotations

import http.server
from pathlib import Path
from typing import Any, Callable

from cm2_env.view.assemble import checklist_texts, dataset_name, episode_view, load_run
from cm2_env.view.html import render_report


def build_report(run_dir: str | Path, out: str | Path) -> dict[str, Any]:
    """Write the report of ``run_dir`` to ``out``; returns what it holds (episodes, steps, bytes, notes)."""
    run = load_run(run_dir)
    notes = []
    texts: dict[str, Any] = {}
    name = dataset_name(run) or ("tooltalk" if run["episodes"] else None)
    if name and run["episodes"]:
        try:
            from cm2_env.data import load_dialogues

            texts = checklist_texts(load_dialogues(name))
        except (OSError, ValueError) as exc:
            notes.append(f"checklist questions unavailable: dataset {name!r} did not load ({exc})")
    if run["bad_lines"]:
        notes.append(f"{run['bad_lines']} lines of the run's files did not parse and were skipped")
    views, unreadable = [], 0
    for record in run["episodes"]:
        dialogue_id = record.get("dialogue_id")
        try:
            views.append(episode_view(record, texts.get(dialogue_id) if isinstance(dialogue_id, str) else None))
        except (ValueError, TypeError, KeyError, AttributeError):  # a malformed record: counted, not fatal
            unreadable += 1
    if unreadable:
        notes.append(f"{unreadable} episode records could not be read and are not shown")
    title = f"cm2 view · {Path(run_dir).resolve().name} · {', '.join(run['kinds'])}"
    page = render_report(title, views, run["metrics"], run["bench"], notes)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return {"episodes": len(views), "steps": len(run["metrics"]), "bytes": out.stat().st_size, "notes": notes}


def report_server(path: str | Path, port: int = 8765, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """An HTTP server (not yet serving) for the report ``path``: that one file, read-only, at ``/`` and
    ``/<name>``; anything else is 404."""
    path = Path(path).resolve()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            if self.path.split("?")[0] not in ("/", f"/{path.name}"):
                self.send_error(404, "only the report is served here")
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
            pass

    return http.server.ThreadingHTTPServer((host, port), Handler)


def serve_file(path: str | Path, port: int = 8765, host: str = "127.0.0.1",
               announce: Callable[[str], None] = print) -> None:
    """Serve the report ``path`` on ``host:port`` (:func:`report_server`), announce its URL, stop on Ctrl-C."""
    with report_server(path, port, host) as server:
        bound_host, bound_port = server.server_address[:2]
        announce(f"http://{bound_host}:{bound_port}/{Path(path).name}")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
