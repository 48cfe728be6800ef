// The raftmesh dashboard: four views (#/cluster, #/runs, #/runs/ID, #/coord) kept live by the
// node's server-sent event streams. Every string from the API enters the page as text (dom.js);
// actions are enabled only for what whoami's `methods` allow (the API refuses the rest anyway).

import { ApiError, METHODS, api, getToken, postAction, qs, setToken } from "./api.js";
import { $, brief, clear, coalesce, el, fmtAge, fmtClock, fmtDuration, fmtTime, pretty } from "./dom.js";
import { ENDED, RunDrawing } from "./graph.js";
import { EventStream } from "./stream.js";

const RUN_STATUSES = [
  "RUNNING",
  "PAUSED",
  "SUCCEEDED",
  "FAILED",
  "CANCELLED",
  "COMPENSATING",
  "COMPENSATED",
  "COMPENSATION_FAILED",
];
const RUN_TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED", "COMPENSATED", "COMPENSATION_FAILED"]);
// The runs stream's snapshot holds the newest RUNS_LISTED runs (the API's most); the list keeps
// at most MAX_RUNS as changed runs come in.
const RUNS_LISTED = 1000;
const MAX_RUNS = 2000;
// A task event naming a task the drawing does not have (a map instance, a spawned task) makes
// the page fetch the run again, at most this often (and never twice at once).
const REFETCH_MIN_MS = 1000;
// The audit timeline is read again after task events at most this often, for drawn runs only
// (a summarised run's timeline is read when the run opens and when it ends).
const AUDIT_MIN_MS = 3000;
const AUDIT_ROWS = 1000;

const state = {
  whoami: null,
  methods: new Set(),
  cluster: null,
  runs: new Map(),
  streams: new Map(),
  route: { view: "cluster" },
  run: null,
};

// ---- connection state -------------------------------------------------------------------

const streamStates = new Map();

function setStreamState(name, st, detail) {
  if (st === "closed") streamStates.delete(name);
  else streamStates.set(name, { st, detail });
  renderConn();
}

function renderConn() {
  const box = $("conn-state");
  let text = "live";
  let cls = "ok";
  const states = [...streamStates.values()];
  const refused = states.find((s) => s.st === "refused");
  if (refused) {
    // a short word here: what to do about it is said once, in the notice under the header
    const e = refused.detail;
    text = e && e.code === "UNAUTHENTICATED" ? (getToken() ? "token refused" : "no token") : "refused";
    box.title = e && e.code ? `${e.code}: ${e.message}` : "refused by the server";
    cls = "bad";
  } else if (states.some((s) => s.st === "reconnecting")) {
    text = "reconnecting…";
    cls = "warn";
    const why = states.find((s) => s.st === "reconnecting").detail;
    box.title = why ? String(why.message || why) : "";
  } else if (states.some((s) => s.st === "connecting")) {
    text = "connecting…";
    cls = "warn";
  } else if (!states.length) {
    text = "idle";
  }
  if (cls === "ok") box.title = "";
  // what is on screen may be out of date while a stream is down: say so by fading it
  document.body.classList.toggle("stale", text.startsWith("reconnecting"));
  box.textContent = text;
  box.className = `conn ${cls}`;
  box.setAttribute("data-state", refused ? "refused" : cls === "ok" ? "live" : text.replace("…", ""));
}

function openStream(name, path, onEvent) {
  closeStream(name);
  const s = new EventStream(path, { onEvent, onState: (st, detail) => setStreamState(name, st, detail) });
  state.streams.set(name, s);
  s.start();
  return s;
}

function closeStream(name) {
  const s = state.streams.get(name);
  if (s) {
    state.streams.delete(name);
    s.close();
  }
}

/** An API error as a line for a browser user: the node's UNAUTHENTICATED messages speak to the CLI
 * (--token, RAFTMESH_TOKEN); here the fix is the token box. The node's words stay in `title`. */
function errorText(exc) {
  if (!(exc instanceof ApiError)) return String(exc);
  if (exc.code === "UNAUTHENTICATED") {
    return getToken()
      ? "this token was refused (unknown to this cluster, revoked or expired): paste another in the box at the top right"
      : "this cluster needs a token: paste one in the box at the top right";
  }
  return `${exc.code}: ${exc.message}`;
}

/** The one line under the header that says why the page shows nothing (no token, a refused one). */
function setNotice(text, title = "") {
  const box = $("notice");
  box.textContent = text;
  box.title = title;
  box.hidden = !text;
}

function showError(where, exc) {
  const box = $(where);
  if (!box) return;
  box.replaceChildren(el("span", { class: "error", title: exc instanceof ApiError ? exc.message : "" }, errorText(exc)));
}

// ---- who am I, the token -------------------------------------------------------------------

async function loadWhoami() {
  const box = $("whoami");
  try {
    const w = await api("/whoami");
    state.whoami = w;
    state.methods = new Set(Array.isArray(w.methods) ? w.methods.map(String) : []);
    const who = w.auth ? `${w.principal || "?"} (${w.role || "?"})` : "open cluster (no tokens)";
    box.textContent = who;
    box.setAttribute("data-role", String(w.role || ""));
    setNotice("");
    $("served-by").textContent = String(w.node_id || "");
  } catch (exc) {
    state.whoami = null;
    state.methods = new Set();
    box.textContent = "";
    box.setAttribute("data-role", "");
    setNotice(errorText(exc), exc instanceof ApiError ? `${exc.code}: ${exc.message}` : "");
  }
  renderActions();
}

function allowed(action) {
  return state.methods.has(METHODS[action]);
}

function setupToken() {
  const input = $("token-input");
  input.value = getToken();
  $("token-form").onsubmit = (ev) => {
    ev.preventDefault();
    setToken(input.value.trim());
    restart();
  };
  $("token-clear").onclick = () => {
    input.value = "";
    setToken("");
    restart();
  };
}

// ---- the cluster ------------------------------------------------------------------------------

function onGlobalEvent(name, data) {
  if (name === "cluster") {
    state.cluster = data;
    renderClusterSoon();
  } else if (name === "runs" && data) {
    if (Array.isArray(data.snapshot)) {
      state.runs = new Map();
      for (const r of data.snapshot) if (r && r.run_id) state.runs.set(String(r.run_id), r);
    } else if (data.run && data.run.run_id) {
      state.runs.set(String(data.run.run_id), data.run);
      if (state.runs.size > MAX_RUNS) {
        const oldest = [...state.runs.values()].sort((a, b) => (a.created_ms || 0) - (b.created_ms || 0));
        for (const r of oldest.slice(0, state.runs.size - MAX_RUNS)) state.runs.delete(String(r.run_id));
      }
    }
    renderRunsSoon();
  }
}

const renderClusterSoon = coalesce(renderCluster);

function yesNo(v) {
  return el("span", { class: v ? "yes" : "no" }, v ? "yes" : "no");
}

function renderCluster() {
  const c = state.cluster;
  if (!c) return;
  $("leader").textContent = String(c.leader || "none");
  $("leader").setAttribute("data-leader", String(c.leader || ""));
  $("term").textContent = String(c.term ?? "");
  $("served-by").textContent = String(c.node_id || "");
  $("quorum").textContent = c.has_quorum ? "quorum" : "NO QUORUM";
  $("quorum").className = c.has_quorum ? "ok" : "bad";
  const rows = [];
  for (const m of c.members || []) {
    // each agent type: its capabilities, and running/concurrency where it sets a limit
    const offers = (m.offers || []).map((o) =>
      el(
        "span",
        { class: "offer", title: `timeout ${o.timeout_ms || 0} ms, retries ${o.retries ?? ""}` },
        el("b", {}, String(o.agent)),
        o.capabilities && o.capabilities.length ? ` [${o.capabilities.join(", ")}]` : "",
        o.concurrency ? ` ${o.running ?? 0}/${o.concurrency}` : o.running ? ` ${o.running} running` : "",
      ),
    );
    if (!offers.length) for (const a of m.agents || []) offers.push(el("span", { class: "offer" }, String(a)));
    const breakers = (m.breakers || []).map((b) =>
      el(
        "div",
        { class: `breaker ${b.state}` },
        `${b.agent}: ${b.state} (${b.failures} failures)`,
        b.open_until_ms ? ` until ${fmtTime(b.open_until_ms)}` : "",
      ),
    );
    const id = String(m.id);
    rows.push(
      el(
        "tr",
        { "data-testid": `member-${id}`, "data-member": id, class: m.id === c.leader ? "leader-row" : "" },
        el("td", {}, id, m.id === c.leader ? el("span", { class: "badge" }, "leader") : ""),
        el("td", {}, el("span", { class: m.up ? "yes" : "no", "data-testid": `member-up-${id}` }, m.up ? "up" : "down")),
        el("td", {}, yesNo(m.reachable)),
        el("td", {}, String(m.leader || "")),
        el("td", { class: "num" }, String(m.term ?? "")),
        el("td", { class: "num" }, String(m.commit_index ?? "")),
        el("td", { class: "num" }, String(m.last_applied ?? "")),
        el("td", { class: "num" }, m.apply_lag === undefined || m.apply_lag === null ? "" : String(m.apply_lag)),
        el("td", { class: "num" }, `${m.running ?? 0}/${m.slots ?? 0}`),
        el("td", { class: "agents" }, ...offers),
        el("td", {}, ...breakers),
        el("td", { class: "addr" }, String(m.grpc || "")),
      ),
    );
  }
  clear($("members-body")).append(...rows);
  const changes = (c.leader_changes || []).map((ch) =>
    el("li", {}, `${fmtTime(ch.time_ms)}  leader ${ch.leader || "none"}  term ${ch.term}`),
  );
  clear($("leader-changes")).append(...(changes.length ? changes : [el("li", { class: "none" }, "none seen")]));
}

// ---- the runs list ----------------------------------------------------------------------------

const renderRunsSoon = coalesce(renderRuns);

function renderRuns() {
  if (state.route.view !== "runs") return;
  const status = $("filter-status").value;
  const ns = $("filter-namespace").value.trim();
  const runs = [...state.runs.values()]
    .filter((r) => (!status || r.status === status) && (!ns || (r.namespace || "") === ns))
    .sort((a, b) => (b.created_ms || 0) - (a.created_ms || 0));
  const now = Date.now();
  const rows = runs.slice(0, 500).map((r) => {
    const total = Number(r.tasks || 0);
    const done = total - Number(r.unfinished || 0);
    const id = String(r.run_id);
    // coloured by the run's status: a failed run's ended tasks are not a success
    const fill = el("div", { class: `fill rs-${r.status}` });
    fill.style.width = `${total ? ((100 * done) / total).toFixed(1) : 0}%`; // CSSOM, not a style attribute (CSP)
    return el(
      "tr",
      { "data-run-id": id, "data-status": String(r.status) },
      el("td", { class: "nowrap" }, el("a", { href: `#/runs/${encodeURIComponent(id)}` }, id)),
      el("td", {}, String(r.name || "")),
      el("td", {}, String(r.namespace || "")),
      el("td", {}, el("span", { class: `status rs-${r.status}` }, String(r.status))),
      el("td", { class: "age", "data-created": String(r.created_ms || 0) }, fmtAge(r.created_ms, now)),
      el(
        "td",
        { class: "nowrap" },
        el("div", { class: "runbar", title: `${done} of ${total} tasks ended`, "data-status": String(r.status) }, fill),
        ` ${done}/${total}`,
      ),
      el("td", { class: "err" }, brief(r.error || r.reason || "", 160)),
    );
  });
  clear($("runs-body")).append(...rows);
  $("runs-count").textContent = `${runs.length} of ${state.runs.size} runs${runs.length > 500 ? " (newest 500 shown)" : ""}`;
}

function tickAges() {
  // local text only: how old each run is, between events (no request is made)
  const now = Date.now();
  for (const td of document.querySelectorAll("td.age")) td.textContent = fmtAge(Number(td.dataset.created), now);
}

// ---- a run ------------------------------------------------------------------------------------

class RunView {
  constructor(runId) {
    this.id = runId;
    this.run = null;
    this.selected = "";
    this.comment = "";
    this.commentFor = "";
    this.fetching = false;
    this.fetchAgain = false;
    this.lastFetch = 0;
    this.refetchTimer = null;
    this.ended = false;
    this.drawing = new RunDrawing($("run-drawing"), (tid) => this.select(tid));
    this.renderHeadSoon = coalesce(() => this.renderHead());
  }

  open() {
    clear($("run-drawing"));
    clear($("task-panel"));
    $("task-panel").hidden = true; // until the run is known: is there anything to click?
    clear($("audit-body"));
    $("action-result").textContent = "";
    $("run-id").textContent = this.id;
    $("run-status").textContent = "…";
    openStream("run", `/api/v1/runs/${encodeURIComponent(this.id)}/events`, (n, d) => this.onEvent(n, d));
    this.loadAudit();
  }

  close() {
    closeStream("run");
    for (const t of [this.refetchTimer, this.auditTimer, this.panelTimer]) if (t) clearTimeout(t);
  }

  onEvent(name, data) {
    if (name === "snapshot" && data) {
      this.setRun(data);
    } else if (name === "task" && data && this.run) {
      const id = String(data.task_id);
      const t = this.run.tasks[id];
      if (t) {
        t.status = String(data.status);
        t.attempt = Number(data.attempt || 0);
        t.node = String(data.node || "");
      }
      const known = this.drawing.updateTask(id, String(data.status), Number(data.attempt || 0), String(data.node || ""));
      if (!known) this.refetch();
      if (id === this.selected) this.refreshSelectedSoon();
      if (this.drawing.mode === "graph") this.auditSoon();
      this.renderHeadSoon();
    } else if (name === "run" && data && this.run) {
      this.run.status = String(data.status);
      if (data.error !== undefined) this.run.error = String(data.error || "");
      this.renderHeadSoon();
    } else if (name === "end") {
      this.ended = true;
      // the final outputs and the whole audit timeline, once
      this.refetch(true);
      this.loadAudit();
    }
  }

  setRun(run) {
    this.run = run;
    this.drawing.setRun(run);
    this.renderHead();
    if (this.selected) this.renderPanel();
  }

  /** GET the run again (new tasks appeared, or it ended): throttled, one at a time. */
  refetch(now = false) {
    if (this.fetching) {
      this.fetchAgain = true;
      return;
    }
    const wait = now ? 0 : Math.max(0, this.lastFetch + REFETCH_MIN_MS - Date.now());
    if (this.refetchTimer) return;
    this.refetchTimer = setTimeout(async () => {
      this.refetchTimer = null;
      this.fetching = true;
      try {
        const run = await api(`/runs/${encodeURIComponent(this.id)}`);
        if (state.run === this) this.setRun(run);
      } catch (exc) {
        if (state.run === this) showError("action-result", exc);
      } finally {
        this.lastFetch = Date.now();
        this.fetching = false;
        if (this.fetchAgain) {
          this.fetchAgain = false;
          this.refetch();
        }
      }
    }, wait);
  }

  auditSoon() {
    if (this.auditTimer) return;
    this.auditTimer = setTimeout(() => {
      this.auditTimer = null;
      if (state.run === this) this.loadAudit();
    }, AUDIT_MIN_MS);
  }

  refreshSelectedSoon() {
    // the panel shows outputs and history, which task events do not carry: fetch once settled
    if (this.panelTimer) return;
    this.panelTimer = setTimeout(() => {
      this.panelTimer = null;
      if (state.run === this && this.selected) this.refetch();
    }, 300);
  }

  renderHead() {
    const r = this.run;
    if (!r) return;
    $("run-status").textContent = String(r.status);
    $("run-status").className = `status rs-${r.status}`;
    $("run-status").setAttribute("data-status", String(r.status));
    const bits = [];
    if (r.name) bits.push(`name ${r.name}`);
    if (r.namespace) bits.push(`namespace ${r.namespace}`);
    if (r.submitter) bits.push(`by ${r.submitter}`);
    if (r.created_ms) bits.push(`created ${fmtTime(r.created_ms)}`);
    if (r.reason) bits.push(`reason ${r.reason}`);
    $("run-meta").textContent = bits.join(" · ");
    $("run-error").textContent = String(r.error || "");
    const waiting = Object.entries(r.tasks || {})
      .filter(([, t]) => t.status === "WAITING_APPROVAL")
      .slice(0, 50);
    clear($("run-approvals")).append(
      ...waiting.map(([tid]) =>
        el(
          "li",
          { "data-task-id": tid },
          el("a", { href: "#", onclick: (ev) => (ev.preventDefault(), this.select(tid)) }, tid),
          " waits for approval",
        ),
      ),
    );
    $("run-approvals-box").hidden = !waiting.length;
    this.renderHint();
    renderActions();
  }

  /** The empty panel's hint, only where there is a task to click: every task of a drawn run, the
   * listed (running, failed, waiting) ones of a summarised run; none listed, no panel. */
  renderHint() {
    if (this.selected || !this.run) return;
    const panel = $("task-panel");
    let hint = "Click a task for its attempts.";
    if (this.drawing.mode === "summary") {
      const listed = new Set(["RUNNING", "FAILED", "WAITING_APPROVAL"]);
      // the drawing's model: it also has the tasks task events brought after the last snapshot
      const any = [...this.drawing.tasks.values()].some((t) => listed.has(t.status));
      hint = any ? "Click a task in the lists for its attempts." : "";
    }
    panel.hidden = !hint;
    if (panel.textContent !== hint) clear(panel).append(...(hint ? [el("p", { class: "note", "data-testid": "task-hint" }, hint)] : []));
  }

  select(tid) {
    this.selected = tid;
    this.drawing.select(tid);
    this.renderPanel();
    // outputs, history and the gate come with the full run, not with task events
    this.refetch(true);
  }

  renderPanel() {
    const panel = $("task-panel");
    panel.hidden = false;
    const hadFocus = document.activeElement && document.activeElement.id === "approve-comment";
    const t = this.run && this.run.tasks ? this.run.tasks[this.selected] : null;
    if (!t) {
      clear(panel).append(el("p", { class: "note" }, `${this.selected}: not in this run (yet).`));
      return;
    }
    const tid = this.selected;
    const rows = [
      ["status", t.status],
      ["agent", t.agent],
      ["node", t.node],
      ["attempt", t.attempt],
      ["parent", t.parent ? `${t.parent} (${t.origin})` : t.origin],
      ["children", (t.children || []).length ? `${t.children.length} (${t.children_waiting || 0} waiting)` : ""],
      ["started", fmtTime(t.started_ms)],
      ["finished", fmtTime(t.finished_ms)],
      ["usage", t.usage ? `tokens ${t.usage.tokens_in}/${t.usage.tokens_out} · cost ${t.usage.cost}` : ""],
      ["waiting", t.waiting_reason],
      ["error", t.error],
    ].filter(([, v]) => v !== undefined && v !== null && v !== "");
    const kids = [];
    kids.push(el("h3", { "data-testid": "task-title" }, tid));
    kids.push(el("table", { class: "kv" }, ...rows.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, String(v))))));
    if (t.approval || t.gate) {
      const gate = t.gate || {};
      kids.push(
        el(
          "div",
          { class: "gate", "data-testid": "gate" },
          el("h4", {}, "Approval"),
          el("p", { class: "prompt" }, String((t.approval && t.approval.prompt) || "")),
          gate.decision
            ? el("p", {}, `${gate.decision} by ${gate.by}${gate.comment ? `: ${gate.comment}` : ""}`)
            : el("p", {}, gate.id ? `gate ${gate.id} open since ${fmtTime(gate.opened_ms)}` : "not open yet"),
        ),
      );
    }
    const actions = el("div", { class: "task-actions" });
    if (t.status === "WAITING_APPROVAL") {
      // the panel is redrawn as events arrive: what is typed lives on the view, not the input
      const comment = el("input", {
        id: "approve-comment",
        "data-testid": "approve-comment",
        placeholder: "comment",
        maxlength: 2000,
        oninput: (ev) => (this.comment = ev.target.value),
      });
      comment.value = this.commentFor === tid ? this.comment : "";
      this.commentFor = tid;
      if (hadFocus) requestAnimationFrame(() => comment.focus());
      actions.append(
        comment,
        el("button", { id: "btn-approve", "data-testid": "btn-approve", onclick: () => this.decide(tid, "approve") }, "Approve"),
        el("button", { id: "btn-reject", "data-testid": "btn-reject", class: "danger", onclick: () => this.decide(tid, "reject") }, "Reject"),
      );
    }
    if (ENDED.has(t.status) && !t.parent) {
      actions.append(el("button", { id: "btn-rerun", "data-testid": "btn-rerun", onclick: () => this.rerun(tid) }, "Rerun task"));
    }
    kids.push(actions);
    if (t.output !== undefined && t.output !== null) kids.push(el("h4", {}, "Output"), el("pre", { "data-testid": "task-output" }, pretty(t.output)));
    const hist = t.history || [];
    kids.push(el("h4", {}, `Attempts (${hist.length})`));
    if (hist.length) {
      const head = ["#", "node", "started", "took", "outcome", "error", "output"].map((h) => el("th", {}, h));
      const rows = hist.map((a) =>
        el(
          "tr",
          {},
          el("td", {}, String(a.attempt)),
          el("td", {}, String(a.node || "")),
          el("td", { title: fmtTime(a.started_ms) }, fmtClock(a.started_ms)),
          el("td", {}, fmtDuration(a.started_ms, a.finished_ms)),
          el("td", {}, String(a.outcome || "")),
          el("td", { class: "err" }, brief(a.error, 300)),
          el("td", {}, brief(a.output, 300)),
        ),
      );
      const table = el("table", { class: "grid", "data-testid": "attempts" }, el("tr", {}, ...head), ...rows);
      kids.push(el("div", { class: "scroll-x" }, table));
    } else {
      kids.push(el("p", { class: "note" }, "No attempt has ended yet."));
    }
    clear(panel).append(...kids);
    renderActions();
  }

  /** POST an action; `describe(answer)` turns the API's answer into a short line for people. */
  async act(label, path, body, describe) {
    const out = $("action-result");
    out.textContent = `${label}…`;
    try {
      const res = await postAction(path, body, (exc) => {
        out.textContent = `${label}… (${exc.code}: retrying)`;
      });
      out.replaceChildren(el("span", { class: "ok", title: brief(res, 2000) }, describe(res || {})));
      this.refetch(true);
      if (this.ended) {
        // a rerun or resume may reopen an ended run: listen again
        this.ended = false;
        openStream("run", `/api/v1/runs/${encodeURIComponent(this.id)}/events`, (n, d) => this.onEvent(n, d));
      }
    } catch (exc) {
      showError("action-result", exc);
    }
  }

  async loadAudit() {
    const body = $("audit-body");
    try {
      const a = await api(`/runs/${encodeURIComponent(this.id)}/audit`);
      if (state.run !== this) return;
      const events = Array.isArray(a.events) ? a.events : [];
      // the API answers a run's first events (up to its limit), oldest first: a timeline
      const shown = events.slice(0, AUDIT_ROWS);
      $("audit-note").textContent =
        `${events.length} events from ${a.node || "?"}${a.complete === false ? " (incomplete)" : ""}` +
        (events.length >= AUDIT_ROWS ? ` (the run's first ${shown.length})` : "");
      clear(body).append(
        ...shown.map((e) =>
          el(
            "tr",
            {},
            el("td", { class: "nowrap" }, fmtTime(e.time_ms)),
            el("td", {}, String(e.kind || "")),
            el("td", {}, String(e.task_id || "")),
            el("td", {}, e.attempt ? String(e.attempt) : ""),
            el("td", {}, String(e.node || "")),
            el("td", {}, String(e.principal || "")),
            el("td", { class: "detail" }, brief(e.detail, 300)),
          ),
        ),
      );
    } catch (exc) {
      if (state.run === this) $("audit-note").textContent = exc instanceof ApiError ? `${exc.code}: ${exc.message}` : String(exc);
    }
  }

  decide(tid, how) {
    const base = `/runs/${encodeURIComponent(this.id)}/tasks/${encodeURIComponent(tid)}`;
    const comment = this.commentFor === tid ? this.comment : "";
    const gate = (res) => (res.gate ? ` (gate ${res.gate})` : "");
    this.act(how === "approve" ? `approve ${tid}` : `reject ${tid}`, `${base}/${how}`, { comment }, (res) =>
      res.applied
        ? `${res.decision || `${how}d`} ${tid}${gate(res)}`
        : `${tid} was already decided: ${res.decision || "?"}${res.by ? ` by ${res.by}` : ""}${gate(res)}`,
    );
  }

  rerun(tid) {
    // the answer says how many tasks were reset, not the attempt: the attempt is the task's next one
    const t = this.run && this.run.tasks ? this.run.tasks[tid] : null;
    const next = t ? Math.max(Number(t.attempt || 0), (t.history || []).length) + 1 : 0;
    this.act(`rerun ${tid}`, `/runs/${encodeURIComponent(this.id)}/tasks/${encodeURIComponent(tid)}/rerun`, {}, (res) => {
      const bits = [next ? `rerun ${tid}: attempt ${next}` : `rerun ${tid}`];
      if (Number(res.reset) > 1) bits.push(`${res.reset} tasks reset`);
      if (res.reopened) bits.push("the run reopened");
      return bits.join("; ");
    });
  }
}

function renderActions() {
  const r = state.run && state.run.run;
  const status = r ? r.status : "";
  const set = (id, action, ok) => {
    const b = $(id);
    if (!b) return;
    const may = allowed(action);
    b.disabled = !(may && ok);
    b.title = may ? "" : `your role${state.whoami && state.whoami.role ? ` (${state.whoami.role})` : ""} may not call ${METHODS[action]}`;
    b.setAttribute("data-allowed", may ? "true" : "false");
  };
  set("btn-cancel", "cancel", r && !RUN_TERMINAL.has(status));
  set("btn-pause", "pause", r && (status === "RUNNING" || status === "PAUSED"));
  set("btn-resume", "resume", r && status === "PAUSED");
  set("btn-approve", "approve", true);
  set("btn-reject", "approve", true);
  set("btn-rerun", "rerun", true);
}

function setupRunButtons() {
  $("btn-cancel").onclick = () => {
    const v = state.run;
    if (v)
      v.act("cancel", `/runs/${encodeURIComponent(v.id)}/cancel`, { reason: "cancelled from the dashboard" }, (res) =>
        res.cancelled ? "cancelled" : `not cancelled: the run is ${res.status || "already over"}`,
      );
  };
  $("btn-pause").onclick = () => {
    const v = state.run;
    if (v)
      v.act("pause", `/runs/${encodeURIComponent(v.id)}/pause`, { cancel_running: false }, (res) =>
        res.changed ? `paused${Number(res.stopped) ? `; ${res.stopped} running tasks stopped` : ""}` : `already ${res.status}`,
      );
  };
  $("btn-resume").onclick = () => {
    const v = state.run;
    if (v) v.act("resume", `/runs/${encodeURIComponent(v.id)}/resume`, {}, (res) => (res.changed ? "resumed" : `already ${res.status}`));
  };
  $("btn-audit").onclick = () => state.run && state.run.loadAudit();
}

// ---- coordination -----------------------------------------------------------------------------

async function loadLocks() {
  try {
    const res = await api(`/locks${qs({ prefix: $("locks-prefix").value.trim() })}`);
    const rows = (res.locks || []).map((lk) =>
      el(
        "tr",
        { "data-lock": String(lk.name) },
        el("td", {}, String(lk.name)),
        el(
          "td",
          {},
          ...(lk.holders || []).map((h) =>
            el("div", {}, `${h.owner} (${h.mode}, token ${h.token})${h.deadline_ms ? ` until ${fmtTime(h.deadline_ms)}` : ""}`),
          ),
        ),
        el("td", {}, ...(lk.waiters || []).map((w) => el("div", {}, brief(w, 200)))),
        el("td", { class: "num" }, String(lk.last_token ?? "")),
      ),
    );
    clear($("locks-body")).append(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 4, class: "none" }, "no locks"))]));
    $("locks-error").textContent = "";
  } catch (exc) {
    showError("locks-error", exc);
  }
}

async function loadKv() {
  try {
    const res = await api(`/kv${qs({ prefix: $("kv-prefix").value.trim(), limit: $("kv-limit").value })}`);
    const rows = (res.entries || []).map((e) =>
      el(
        "tr",
        { "data-key": String(e.key) },
        el("td", {}, String(e.key)),
        el("td", {}, el("code", {}, brief(e.value, 500))),
        el("td", { class: "num" }, String(e.mod_revision ?? "")),
        el("td", { class: "num" }, String(e.version ?? "")),
        el("td", { class: "num" }, e.lease ? String(e.lease) : ""),
      ),
    );
    clear($("kv-body")).append(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 5, class: "none" }, "no keys"))]));
    $("kv-error").textContent = "";
  } catch (exc) {
    showError("kv-error", exc);
  }
}

async function loadDeadLetters() {
  try {
    const res = await api("/dead-letters");
    const tasks = (res.tasks || []).map((d) =>
      el(
        "tr",
        {},
        el("td", {}, el("a", { href: `#/runs/${encodeURIComponent(String(d.run_id))}` }, String(d.run_id))),
        el("td", {}, String(d.task_id)),
        el("td", {}, String(d.agent || "")),
        el("td", { class: "num" }, String(d.attempt ?? "")),
        el("td", {}, fmtTime(d.finished_ms)),
        el("td", { class: "err" }, brief(d.error, 300)),
      ),
    );
    clear($("dl-tasks-body")).append(...(tasks.length ? tasks : [el("tr", {}, el("td", { colspan: 6, class: "none" }, "none"))]));
    const msgs = (res.messages || []).map((d) => {
      const m = d.message || {};
      return el(
        "tr",
        {},
        el("td", {}, String(m.id || "")),
        el("td", {}, String(m.sender || "")),
        el("td", {}, String(m.target || m.topic || "")),
        el("td", {}, String(m.type || "")),
        el("td", {}, String(d.node || "")),
        el("td", {}, fmtTime(d.recorded_ms)),
        el("td", { class: "err" }, brief(d.reason, 300)),
      );
    });
    clear($("dl-msgs-body")).append(...(msgs.length ? msgs : [el("tr", {}, el("td", { colspan: 7, class: "none" }, "none"))]));
    $("dl-error").textContent = "";
  } catch (exc) {
    showError("dl-error", exc);
  }
}

function setupCoord() {
  $("locks-form").onsubmit = (ev) => (ev.preventDefault(), loadLocks());
  $("kv-form").onsubmit = (ev) => (ev.preventDefault(), loadKv());
  $("dl-refresh").onclick = () => loadDeadLetters();
}

// ---- routing ----------------------------------------------------------------------------------

function parseRoute() {
  const h = location.hash.replace(/^#\/?/, "");
  if (h.startsWith("runs/")) return { view: "run", id: decodeURIComponent(h.slice(5)) };
  if (h === "runs") return { view: "runs" };
  if (h === "coord") return { view: "coord" };
  return { view: "cluster" };
}

function route(fresh = false) {
  const r = parseRoute();
  const prev = state.route;
  state.route = r;
  for (const v of ["cluster", "runs", "run", "coord"]) $(`view-${v}`).hidden = v !== r.view;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === (r.view === "run" ? "runs" : r.view));
  if (state.run && (r.view !== "run" || r.id !== state.run.id)) {
    state.run.close();
    state.run = null;
  }
  if (r.view === "run" && !state.run) {
    state.run = new RunView(r.id);
    state.run.open();
  }
  if (r.view === "runs") renderRuns();
  if (r.view === "coord" && (fresh || prev.view !== "coord")) {
    loadLocks();
    loadKv();
    loadDeadLetters();
  }
  renderActions();
}

/** (Re)start everything that depends on the token: whoami, the streams, the current view. */
function restart() {
  loadWhoami();
  openStream("events", `/api/v1/events${qs({ limit: RUNS_LISTED })}`, onGlobalEvent);
  if (state.run) {
    state.run.close();
    state.run = null;
  }
  route(true);
}

function main() {
  setupToken();
  setupRunButtons();
  setupCoord();
  const statusSel = $("filter-status");
  statusSel.append(el("option", { value: "" }, "any status"), ...RUN_STATUSES.map((s) => el("option", { value: s }, s)));
  statusSel.onchange = renderRuns;
  $("filter-namespace").oninput = renderRuns;
  window.addEventListener("hashchange", () => route());
  setInterval(tickAges, 5000);
  restart();
}

main();
