// A run's tasks as a live drawing: an SVG DAG laid out by dagre for runs up to LARGE_RUN_TASKS
// tasks (dagre lays out 200 tasks in ~0.25 s, 280 in ~2 s on this machine); above that a summary (counts per status, a progress bar, the running, failed and waiting
// tasks), because laying out and painting thousands of nodes would freeze the tab. Task events
// only mark tasks dirty; the DOM is touched once per animation frame.

import dagre from "./vendor/dagre.esm.js";
import { $, clear, coalesce, el, svg } from "./dom.js";

export const LARGE_RUN_TASKS = 200;
const LIST_MAX = 200;
const LIST_REFRESH_MS = 500;
const NODE_W = 150;
const NODE_H = 40;

export const STATUSES = [
  "PENDING",
  "READY",
  "RUNNING",
  "WAITING_APPROVAL",
  "WAITING_CHILDREN",
  "SUCCEEDED",
  "FAILED",
  "CANCELLED",
  "SKIPPED",
];
export const ENDED = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "SKIPPED"]);

function shortLabel(s, n) {
  return s.length > n ? `${s.slice(0, n - 1)}…` : s;
}

export class RunDrawing {
  /** `root`: the element to draw in; `onSelect(taskId)`: a task was clicked. */
  constructor(root, onSelect) {
    this.root = root;
    this.onSelect = onSelect;
    this.tasks = new Map();
    this.counts = new Map();
    this.dirty = new Set();
    this.nodes = new Map();
    this.mode = "";
    this.listsAt = 0;
    this.listTimer = null;
    this.selected = "";
    this.flushSoon = coalesce(() => this.flush());
  }

  /** A full snapshot (RunInfo JSON): rebuild the model, and the drawing if its shape changed. */
  setRun(run) {
    const tasks = new Map();
    for (const [id, t] of Object.entries(run.tasks || {})) {
      tasks.set(id, {
        id,
        status: String(t.status || ""),
        agent: String(t.agent || ""),
        deps: Array.isArray(t.deps) ? t.deps.map(String) : [],
        parent: String(t.parent || ""),
        origin: String(t.origin || ""),
        node: String(t.node || ""),
        attempt: Number(t.attempt || 0),
      });
    }
    const sameShape =
      this.mode === (tasks.size > LARGE_RUN_TASKS ? "summary" : "graph") &&
      tasks.size === this.tasks.size &&
      [...tasks.keys()].every((id) => this.tasks.has(id));
    this.tasks = tasks;
    this.recount();
    if (sameShape) {
      for (const id of tasks.keys()) this.dirty.add(id);
      this.flushSoon();
    } else {
      this.build();
    }
  }

  /** A task event; returns false if the task is not in the model (the caller refetches the run). */
  updateTask(id, status, attempt, node) {
    const t = this.tasks.get(id);
    if (!t) {
      if (this.mode !== "summary") return false;
      // In the summary a new task (a map instance, a spawned task) needs no layout: count it.
      this.tasks.set(id, { id, status, agent: "", deps: [], parent: "", origin: "", node, attempt });
      this.counts.set(status, (this.counts.get(status) || 0) + 1);
      this.flushSoon();
      return true;
    }
    if (t.status !== status) {
      this.counts.set(t.status, (this.counts.get(t.status) || 1) - 1);
      this.counts.set(status, (this.counts.get(status) || 0) + 1);
      t.status = status;
    }
    t.attempt = attempt;
    t.node = node;
    this.dirty.add(id);
    this.flushSoon();
    return true;
  }

  select(id) {
    this.selected = id;
    for (const [tid, g] of this.nodes) g.classList.toggle("selected", tid === id);
  }

  recount() {
    this.counts = new Map();
    for (const t of this.tasks.values()) this.counts.set(t.status, (this.counts.get(t.status) || 0) + 1);
  }

  build() {
    this.mode = this.tasks.size > LARGE_RUN_TASKS ? "summary" : "graph";
    this.nodes = new Map();
    this.dirty.clear();
    const counts = el("div", { class: "counts", "data-testid": "status-counts" });
    const bar = el("div", { class: "progress", "data-testid": "progress" });
    const body = el("div", { class: this.mode === "graph" ? "dag-wrap" : "summary", id: "run-body" });
    clear(this.root).append(counts, bar, body);
    if (this.mode === "graph") this.drawGraph(body);
    else this.drawSummary(body);
    this.listsAt = 0;
    this.flush();
  }

  drawGraph(body) {
    const g = new dagre.graphlib.Graph();
    g.setGraph({ rankdir: "LR", nodesep: 12, ranksep: 48, marginx: 8, marginy: 8 });
    g.setDefaultEdgeLabel(() => ({}));
    for (const t of this.tasks.values()) g.setNode(t.id, { width: NODE_W, height: NODE_H });
    for (const t of this.tasks.values()) {
      for (const d of t.deps) if (this.tasks.has(d)) g.setEdge(d, t.id, { kind: "dep" });
      // map instances, replicas, judges and spawned tasks hang from the task that made them
      if (t.parent && this.tasks.has(t.parent) && !g.hasEdge(t.parent, t.id))
        g.setEdge(t.parent, t.id, { kind: "child" });
    }
    dagre.layout(g);
    const { width, height } = g.graph();
    const root = svg("svg", {
      id: "dag",
      "data-testid": "dag",
      width: Math.ceil(width || 0),
      height: Math.ceil(height || 0),
      viewBox: `0 0 ${Math.ceil(width || 0)} ${Math.ceil(height || 0)}`,
    });
    root.append(
      svg(
        "defs",
        {},
        svg(
          "marker",
          { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 6, markerHeight: 6, orient: "auto" },
          svg("path", { d: "M0,0 L10,5 L0,10 z", class: "arrowhead" }),
        ),
      ),
    );
    for (const e of g.edges()) {
      const info = g.edge(e);
      const d = info.points.map((p, i) => `${i ? "L" : "M"}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ");
      root.append(svg("path", { d, class: `edge ${info.kind}`, "marker-end": "url(#arrow)" }));
    }
    for (const t of this.tasks.values()) {
      const n = g.node(t.id);
      const sub = [t.origin, t.agent].filter(Boolean).join(" · ");
      const node = svg(
        "g",
        {
          class: "task",
          transform: `translate(${(n.x - NODE_W / 2).toFixed(1)},${(n.y - NODE_H / 2).toFixed(1)})`,
          "data-task-id": t.id,
          "data-status": t.status,
          "data-origin": t.origin,
          tabindex: 0,
          role: "button",
        },
        svg("title", {}, `${t.id}: ${t.status}`),
        svg("rect", { width: NODE_W, height: NODE_H, rx: 6, ry: 6 }),
        svg("text", { x: 8, y: 16, class: "tid" }, shortLabel(t.id, 22)),
        svg("text", { x: 8, y: 32, class: "tsub" }, shortLabel(sub, 26)),
      );
      node.onclick = () => this.onSelect(t.id);
      node.onkeydown = (ev) => {
        if (ev.key === "Enter") this.onSelect(t.id);
      };
      if (t.id === this.selected) node.classList.add("selected");
      this.nodes.set(t.id, node);
      root.append(node);
    }
    body.append(root);
  }

  drawSummary(body) {
    body.append(
      el("p", { class: "note", "data-testid": "summary" }, `${this.tasks.size} tasks: too many to draw; a summary instead.`),
    );
    for (const [key, title] of [
      ["RUNNING", "Running"],
      ["FAILED", "Failed"],
      ["WAITING_APPROVAL", "Waiting for approval"],
    ]) {
      body.append(el("h4", {}, title), el("ul", { class: "task-list", id: `list-${key}`, "data-testid": `list-${key}` }));
    }
  }

  flush() {
    if (!this.root.isConnected) return;
    const counts = this.root.querySelector(".counts");
    const bar = this.root.querySelector(".progress");
    if (!counts || !bar) return;
    const total = this.tasks.size;
    const parts = [];
    for (const s of STATUSES) {
      const n = this.counts.get(s) || 0;
      if (n) parts.push(el("span", { class: `count st-${s}`, "data-testid": `count-${s}` }, `${s} ${n}`));
    }
    counts.replaceChildren(el("span", { class: "count", "data-testid": "count-total" }, `${total} tasks`), ...parts);
    const segs = [];
    for (const s of ["SUCCEEDED", "SKIPPED", "FAILED", "CANCELLED", "RUNNING", "WAITING_APPROVAL"]) {
      const n = this.counts.get(s) || 0;
      if (!n || !total) continue;
      const seg = el("div", { class: `seg st-${s}` });
      seg.style.width = `${((100 * n) / total).toFixed(3)}%`; // CSSOM, not a style attribute: fine under a strict CSP
      segs.push(seg);
    }
    let ended = 0;
    for (const s of ENDED) ended += this.counts.get(s) || 0;
    bar.replaceChildren(...segs);
    bar.setAttribute("data-ended", String(ended));
    bar.setAttribute("data-total", String(total));
    bar.title = `${ended} of ${total} tasks ended`;
    if (this.mode === "graph") {
      for (const id of this.dirty) {
        const node = this.nodes.get(id);
        const t = this.tasks.get(id);
        if (!node || !t) continue;
        node.setAttribute("data-status", t.status);
        node.firstChild.textContent = `${t.id}: ${t.status}${t.node ? ` on ${t.node}` : ""}`;
      }
      this.dirty.clear();
    } else {
      this.dirty.clear();
      const now = performance.now();
      if (now - this.listsAt >= LIST_REFRESH_MS) {
        this.listsAt = now;
        this.drawLists();
      } else {
        // the lists catch up at the next refresh even if no event comes
        if (!this.listTimer)
          this.listTimer = setTimeout(() => {
            this.listTimer = null;
            this.flushSoon();
          }, LIST_REFRESH_MS);
      }
    }
  }

  drawLists() {
    for (const key of ["RUNNING", "FAILED", "WAITING_APPROVAL"]) {
      const ul = $(`list-${key}`);
      if (!ul) continue;
      const items = [];
      let more = 0;
      for (const t of this.tasks.values()) {
        if (t.status !== key) continue;
        if (items.length >= LIST_MAX) {
          more += 1;
          continue;
        }
        const li = el(
          "li",
          { "data-task-id": t.id, class: `st-${t.status}` },
          el("a", { href: "#", onclick: (ev) => (ev.preventDefault(), this.onSelect(t.id)) }, t.id),
          t.node ? ` on ${t.node}` : "",
          t.attempt > 1 ? ` (attempt ${t.attempt})` : "",
        );
        items.push(li);
      }
      if (more) items.push(el("li", { class: "more" }, `… and ${more} more`));
      if (!items.length) items.push(el("li", { class: "none" }, "none"));
      ul.replaceChildren(...items);
    }
  }
}
