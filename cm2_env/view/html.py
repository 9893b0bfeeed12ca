"""The self-contained HTML report of ``cm2 view``: one file, no network, safe with hostile transcripts.

Contract:

- :func:`render_report` returns one HTML document: inline CSS and JavaScript, training curves as inline SVG drawn
  by matplotlib, and the data as JSON in ``<script type="application/json">`` blocks. It loads nothing from a
  network (no CDN), so it opens offline and on clusters.
- Everything from a run (model output, tool results, user messages, ids) is data: the JSON is escaped so that
  no ``</script>`` or ``<!--`` can end its block, and the page builds the DOM with ``textContent`` only, so no
  transcript can inject markup or script.
- Large runs stay fast: the episode list is an index (one short row per episode) shown 100 rows a page, and the
  episodes themselves are stored gzip-compressed in chunks of :data:`CHUNK` that the page decompresses
  (``DecompressionStream``) only when one of their episodes is opened.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import math
import re
import statistics
from collections import Counter
from typing import Any, Mapping, Sequence

CHUNK = 50
#: Training curves drawn in the report: (metrics key, title).
CURVES: tuple[tuple[str, str], ...] = (("reward/mean", "mean reward R"), ("kl", "KL to the reference"),
                                       ("clip_fraction", "clip fraction"), ("loss", "loss"))


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinities: not JSON) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    # ASCII only: lone surrogates (a tool result cut mid-character) stay escapes instead of failing to encode
    return json.dumps(finite(value), ensure_ascii=True, allow_nan=False, separators=(",", ":"), default=str)


def safe_json(value: Any) -> str:
    """JSON that is inert inside a ``<script>`` block (``<``, ``>`` and ``&`` escaped; ASCII only)."""
    return _dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def pack(episodes: Sequence[Mapping[str, Any]]) -> str:
    """A chunk of episode views: gzip-compressed JSON, base64."""
    raw = _dumps(list(episodes)).encode("ascii")
    return base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def summary(views: Sequence[Mapping[str, Any]], metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean reward (failed episodes excluded, as the trainer does), failures, end reasons, steps."""
    live = [v["R"] for v in views if not v["failed"] and isinstance(v.get("R"), (int, float))]
    return {
        "episodes": len(views), "failed": sum(bool(v["failed"]) for v in views),
        "mean_reward": round(statistics.fmean(live), 4) if live else None,
        "end_reasons": dict(Counter(str(v.get("end_reason")) for v in views).most_common()),
        "steps": len(metrics),
    }


def index_row(i: int, view: Mapping[str, Any]) -> list[Any]:
    """The episode list's row: number, dialogue, group member, step, R, end reason, failed, turns, actions."""
    actions = sum(len(t["actions"]) for t in view["turns"])
    return [i, view.get("dialogue_id"), view.get("group_index"), view.get("step"), view.get("R"),
            view.get("end_reason"), bool(view.get("failed")), view.get("turns_reached"), actions]


def curves_svg(metrics: Sequence[Mapping[str, Any]]) -> str:
    """The training curves (reward, KL, clip fraction, loss per step) as one inline SVG; "" without metrics."""
    panels = [(key, title, [(r["step"], r[key]) for r in metrics
                            if isinstance(r.get(key), (int, float)) and isinstance(r.get("step"), int)])
              for key, title in CURVES]
    panels = [p for p in panels if p[2]]
    if not panels:
        return ""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "cm2-view"  # the same run gives the same file
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.6), squeeze=False)
    for ax, (key, title, points) in zip(axes[0], panels):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o", markersize=2.5, linewidth=1.2)
        if key == "reward/mean" and all(isinstance(r.get("reward/std"), (int, float)) for r in metrics
                                        if isinstance(r.get(key), (int, float))):
            std = [r["reward/std"] for r in metrics if isinstance(r.get(key), (int, float))]
            ax.fill_between(steps, [v - s for v, s in zip(values, std)], [v + s for v, s in zip(values, std)],
                            alpha=0.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None})
    plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]


def render_report(title: str, views: Sequence[Mapping[str, Any]], metrics: Sequence[Mapping[str, Any]],
                  bench: Mapping[str, Any] | None, notes: Sequence[str] = ()) -> str:
    """The whole HTML document (see the module docstring)."""
    data = {
        "title": title, "summary": summary(views, metrics), "notes": list(notes), "chunk": CHUNK,
        "index": [index_row(i, v) for i, v in enumerate(views)],
        "chunks": [pack(views[i:i + CHUNK]) for i in range(0, len(views), CHUNK)],
        "bench": _bench(bench),
    }
    values = {"TITLE": _escape_text(title), "CURVES": curves_svg(metrics), "DATA": safe_json(data),
              "SCRIPT_HASH": _SCRIPT_HASH}
    return re.sub(r"__(TITLE|CURVES|DATA|SCRIPT_HASH)__", lambda m: values[m.group(1)], _TEMPLATE)  # one pass


def _bench(bench: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not bench:
        return None
    results = [{"name": r.get("name"), "similarity": r.get("similarity"), "categories": r.get("categories"),
                "error": r.get("exception_type")} for r in bench.get("results") or []]
    return {"name": bench.get("name"), "markdown": bench.get("markdown") or json.dumps(bench.get("report"), indent=1),
            "results": results}


def _escape_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-__SCRIPT_HASH__'; img-src data:; base-uri 'none'; form-action 'none'">
<title>__TITLE__</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 18px}header h1{font-size:17px;margin:0}
main{display:grid;grid-template-columns:minmax(420px,38%) 1fr;gap:12px;padding:12px}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px;overflow:auto}
#summary{grid-column:1/3}#summary dl{display:flex;flex-wrap:wrap;gap:4px 22px;margin:0}#summary dt{color:#667}
#summary dd{margin:0 0 0 4px;font-weight:600}#curves svg{max-width:100%;height:auto}
table{border-collapse:collapse;width:100%;font-size:13px}th{cursor:pointer;text-align:left;background:#eef0f4;position:sticky;top:0}
td,th{padding:3px 6px;border-bottom:1px solid #eceef2}tr.row:hover{background:#eef5ff;cursor:pointer}tr.sel{background:#dcebff}
.pager{margin:6px 0;display:flex;gap:8px;align-items:center}input[type=search]{width:55%}
.turn{border-left:3px solid #9aa5b8;margin:10px 0;padding-left:8px}.msg{margin:6px 0;padding:6px 8px;border-radius:5px;white-space:pre-wrap;word-break:break-word}
.user{background:#eef3ff}.assistant{background:#f3f7ee}.tool{background:#f7f3ea;font-family:ui-monospace,monospace;font-size:12px}
.system{background:#f1f1f1;font-size:12px}.call{font-family:ui-monospace,monospace;font-size:12px;background:#fff;border:1px solid #dfe3ea;padding:4px;margin-top:4px}
.action{border:1px solid #e3e6eb;border-radius:6px;margin:6px 0;padding:4px 6px}.action.diff{border-color:#d98c00;background:#fffaf0}
.meta{font-size:12px;color:#556}.item{display:inline-block;margin:2px 4px 2px 0;padding:1px 6px;border-radius:10px;background:#dff3e4;font-size:12px}
.miss{background:#fde8e8;border:1px solid #f3b4b4;border-radius:5px;padding:4px 6px;margin:4px 0;font-size:12px}
details summary{cursor:pointer;color:#556;font-size:12px}.cols{display:grid;grid-template-columns:1fr 1fr;gap:10px}
.bad{color:#b00020}
</style></head><body>
<header><h1>__TITLE__</h1></header>
<main>
<section id="summary"><dl id="summary-list"></dl><div id="curves">__CURVES__</div><div id="bench"></div></section>
<section id="list"><div class="pager"><input type="search" id="filter" placeholder="filter: dialogue, end reason, step">
<button id="prev">&lt;</button><span id="page"></span><button id="next">&gt;</button>
<button id="compare-button" disabled>compare 2</button></div>
<table id="episodes"><thead><tr><th data-k="0">#</th><th data-k="1">dialogue</th><th data-k="2">g</th><th data-k="3">step</th>
<th data-k="4">R</th><th data-k="5">end</th><th data-k="7">turns</th><th data-k="8">actions</th><th>cmp</th></tr></thead><tbody></tbody></table></section>
<section id="detail"><p class="meta">Click an episode to read its transcript with the checklist verdicts; tick two to compare them.</p></section>
</main>
<script type="application/json" id="cm2-data">__DATA__</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("cm2-data").textContent);
const cache = new Map();
let rows = DATA.index.slice(), page = 0, sortKey = 0, sortDir = 1, picked = [];
const PAGE = 100;
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) if (child != null) node.append(child instanceof Node ? child : String(child));
  return node;
}
function fmt(x, d) { return typeof x === "number" ? x.toFixed(d === undefined ? 3 : d) : (x == null ? "–" : String(x)); }
async function chunk(n) {
  if (!cache.has(n)) {
    const loading = (async () => {
      const bytes = Uint8Array.from(atob(DATA.chunks[n]), c => c.charCodeAt(0));
      const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
      return JSON.parse(await new Response(stream).text());
    })();
    cache.set(n, loading);
    loading.catch(() => cache.delete(n));  // a failed chunk is tried again next time
  }
  return cache.get(n);
}
async function episode(i) { return (await chunk(Math.floor(i / DATA.chunk)))[i % DATA.chunk]; }
function renderSummary() {
  const s = DATA.summary, dl = document.getElementById("summary-list");
  const add = (k, v) => dl.append(el("dt", {text: k}), el("dd", {text: v}));
  add("episodes", s.episodes); add("mean reward (failed excluded)", fmt(s.mean_reward, 4));
  add("failed", s.failed); if (s.steps) add("training steps", s.steps);
  add("end reasons", Object.entries(s.end_reasons).map(([k, v]) => k + " " + v).join(", ") || "–");
  for (const note of DATA.notes) add("note", note);
  if (DATA.bench) {
    const b = document.getElementById("bench");
    b.append(el("h3", {text: "benchmark report: " + DATA.bench.name}), el("pre", {text: DATA.bench.markdown}));
    if (DATA.bench.results.length) {
      const t = el("table", {id: "bench-results"}, el("tr", {}, el("th", {text: "scenario"}), el("th", {text: "similarity"}),
        el("th", {text: "categories"}), el("th", {text: "error"})));
      for (const r of DATA.bench.results) t.append(el("tr", {}, el("td", {text: r.name}), el("td", {text: fmt(r.similarity)}),
        el("td", {text: (r.categories || []).join(" ")}), el("td", {class: r.error ? "bad" : "", text: r.error || ""})));
      b.append(t);
    }
  }
}
function renderList() {
  const q = document.getElementById("filter").value.trim().toLowerCase();
  const shown = rows.filter(r => !q || [r[1], r[5], r[3]].some(v => v != null && String(v).toLowerCase().includes(q)));
  const pages = Math.max(1, Math.ceil(shown.length / PAGE)); page = Math.min(page, pages - 1);
  document.getElementById("page").textContent = "page " + (page + 1) + " / " + pages + " (" + shown.length + " episodes)";
  const body = document.querySelector("#episodes tbody"); body.replaceChildren();
  for (const r of shown.slice(page * PAGE, page * PAGE + PAGE)) {
    const box = el("input", {type: "checkbox", "data-i": r[0]}); box.checked = picked.includes(r[0]);
    box.addEventListener("click", e => { e.stopPropagation(); togglePick(r[0], box.checked); });
    const tr = el("tr", {class: "row", "data-i": r[0]}, el("td", {text: r[0]}), el("td", {text: r[1]}), el("td", {text: fmt(r[2], 0)}),
      el("td", {text: fmt(r[3], 0)}), el("td", {class: r[6] ? "bad" : "", text: r[6] ? "failed" : fmt(r[4])}),
      el("td", {text: r[5]}), el("td", {text: r[7]}), el("td", {text: r[8]}), el("td", {}, box));
    tr.addEventListener("click", () => show(r[0]));
    body.append(tr);
  }
}
function togglePick(i, on) {
  picked = picked.filter(x => x !== i); if (on) picked.push(i); if (picked.length > 2) picked.shift();
  document.getElementById("compare-button").disabled = picked.length !== 2; renderList();
}
function splitThink(text) {
  const m = /<think>([\s\S]*?)(<\/think>|$)/.exec(text || "");
  return m ? [m[1].trim(), (text.slice(0, m.index) + text.slice(m.index + m[0].length)).trim()] : ["", text || ""];
}
function messageNode(m) {
  if (!m || typeof m !== "object") m = {role: "?", content: String(m)};
  const role = String(m.role || "?"), node = el("div", {class: "msg " + role});
  node.append(el("div", {class: "meta", text: role + (m.name ? " · " + m.name : "")}));
  const text = typeof m.content === "string" ? m.content : (m.content == null ? "" : JSON.stringify(m.content));
  const [think, visible] = role === "assistant" ? splitThink(text) : ["", text];
  if (think) node.append(el("details", {}, el("summary", {text: "thinking (" + think.length + " chars)"}), el("div", {text: think})));
  if (visible) node.append(el("div", {text: visible}));
  for (const c of Array.isArray(m.tool_calls) ? m.tool_calls : []) {
    const f = (c && c.function) || {}; let args = f.arguments;
    try { args = JSON.stringify(JSON.parse(args), null, 1); } catch (e) { /* keep the raw text */ }
    node.append(el("div", {class: "call", text: "→ " + f.name + " " + args}));
  }
  return node;
}
function itemName(it) { return (it.variant != null ? "v" + it.variant + "." : "") + it.id; }
function itemBadge(it) {
  const share = it.contribution == null ? "" : " · +" + fmt(it.contribution, 3) + " R";
  const gated = it.paid_at != null && it.paid_at !== it.first_action ? " · paid at action " + it.paid_at :
    (it.paid_at == null ? " · not paid (dependency)" : "");
  return el("span", {class: "item", title: it.question || "", "data-item": itemName(it),
    text: itemName(it) + " ✓ w " + fmt(it.weight, 2) + share + gated + " · " + (it.source || "?")});
}
function actionNode(a, other) {
  const differs = other !== undefined && (!other || JSON.stringify(other.assistant) !== JSON.stringify(a.assistant));
  const node = el("div", {class: "action" + (differs ? " diff" : ""), "data-action": a.index});
  node.append(el("div", {class: "meta", text: "action " + a.index + " · paid " + fmt(a.paid) + " · adds " + fmt(a.contribution) + " to R"}));
  node.append(messageNode(a.assistant));
  for (const t of a.tools) node.append(messageNode(t));
  const sat = el("div", {class: "satisfied"}); for (const it of a.satisfied) sat.append(itemBadge(it));
  node.append(sat);
  return node;
}
function episodeNode(v, other) {
  const root = el("div", {class: "episode", "data-episode": v.dialogue_id});
  root.append(el("h3", {text: v.dialogue_id + (v.group_index != null ? " · g" + v.group_index : "") + (v.step != null ? " · step " + v.step : "")}));
  root.append(el("div", {class: "meta", text: "R " + fmt(v.R) + " · " + (v.end_reason || "") + (v.failed ? " · FAILED: " + v.failure : "") +
    " · turns " + v.turns_reached + "/" + v.reference_turns + " · L " + v.L}));
  for (const m of v.lead) root.append(messageNode(m));
  v.turns.forEach((t, ti) => {
    const turn = el("div", {class: "turn", "data-turn": t.index});
    turn.append(el("div", {class: "meta", text: "turn " + (t.index + 1) + " · R_t " + fmt(t.reward)}), messageNode(t.user));
    const ot = other ? other.turns[ti] : undefined;
    t.actions.forEach((a, ai) => turn.append(actionNode(a, other === undefined ? undefined : (ot ? ot.actions[ai] || null : null))));
    for (const it of t.unsatisfied) turn.append(el("div", {class: "miss", "data-item": itemName(it)},
      el("b", {text: itemName(it) + " not satisfied (w " + fmt(it.weight, 2) + ")"}), el("div", {text: it.question || ""}),
      it.pass_condition ? el("div", {class: "meta", text: "passes when: " + it.pass_condition}) : null));
    root.append(turn);
  });
  if (v.paid_after_actions != null) root.append(el("div", {class: "meta", text:
    "paid when the episode ended (" + (v.end_reason || "") + "), after its last action: " + fmt(v.paid_after_actions)}));
  return root;
}
let latest = 0;  // only the last click renders, however long its chunk takes
async function render(build) {
  const token = ++latest, pane = document.getElementById("detail");
  try {
    const nodes = await build();
    if (token === latest) pane.replaceChildren(...nodes);
  } catch (e) {
    if (token === latest) pane.replaceChildren(el("p", {class: "bad", text: "could not show this: " + e}));
  }
}
function show(i) {
  document.querySelectorAll("tr.row").forEach(tr => tr.classList.toggle("sel", Number(tr.dataset.i) === i));
  return render(async () => [episodeNode(await episode(i))]);
}
function compare() {
  const pair = picked.slice();
  return render(async () => {
    const [a, b] = await Promise.all(pair.map(episode));
    return [el("div", {class: "meta", text: "comparing #" + pair[0] + " and #" + pair[1] + ": differing actions are framed"}),
      el("div", {class: "cols", id: "compare-view"}, episodeNode(a, b), episodeNode(b, a))];
  });
}
document.querySelectorAll("#episodes th[data-k]").forEach(th => th.addEventListener("click", () => {
  const k = Number(th.dataset.k); sortDir = k === sortKey ? -sortDir : 1; sortKey = k;
  rows.sort((x, y) => (x[k] == null) - (y[k] == null) || (x[k] < y[k] ? -sortDir : x[k] > y[k] ? sortDir : 0)); renderList();
}));
document.getElementById("filter").addEventListener("input", () => { page = 0; renderList(); });
document.getElementById("prev").addEventListener("click", () => { page = Math.max(0, page - 1); renderList(); });
document.getElementById("next").addEventListener("click", () => { page += 1; renderList(); });
document.getElementById("compare-button").addEventListener("click", compare);
renderSummary(); renderList();
document.body.dataset.ready = "1";
</script>
</body></html>
"""


# The CSP allows exactly the page's own script (by its hash): markup injected by any means could not run.
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(
    _TEMPLATE.split("<script>", 1)[1].split("</script>", 1)[0].encode("utf-8")).digest()).decode("ascii")

