// One execution: its playbook's graph coloured by each step's status, a timeline of the steps it
// ran (durations, attempts, items), each step's input, result and error, and its events live from
// the SSE stream; cancel it, or run it again with a payload.
//
// Events are folded into step runs as they come; the DOM is touched once per animation frame, for
// new runs (appended in bulk) and changed ones only, so a run of a thousand steps stays fluid.
import {
  api,
  badge,
  catalogHref,
  drawGraph,
  el,
  fmtDuration,
  fmtTime,
  follow,
  json,
  normalEvent,
  perFrame,
  playbookGraph,
  showError,
  url,
} from "./console.js";

const LOG_LINES = 300;
const ROWS_PER_FRAME = 400;
const id = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());

const exec = { status: "running", start: null, end: null, path: "", version: "", result: undefined, error: null };
const seen = new Set();
const runs = [];
const latest = new Map(); // step name -> its latest run
let fresh = []; // runs not drawn yet
const dirty = new Set();
let logged = [];
let headerDirty = true;
let selected = null;
let graphNodes = new Map();
let lastRescale = 0;
let done = 0;

// --------------------------------------------------------------------------- the page

const app = document.getElementById("app");
const title = el("h1", {}, `Execution ${id}`);
const state = el("span", { id: "exec-status" });
const facts = el("dl", { class: "facts", id: "facts" });
const cancel = el("button", { type: "button", id: "cancel", class: "danger", text: "Cancel" });
const again = el("textarea", { id: "payload", rows: 5, spellcheck: "false" });
const rerun = el("button", { type: "button", id: "rerun", class: "primary", text: "Run again" });
const actionNote = el("div", { id: "action-note" });
const graphBox = el("div", { class: "graph-box", id: "graph" }, el("p", { class: "muted", text: "reading the playbook…" }));
const tbody = el("tbody");
const timeline = el(
  "table",
  { id: "timeline" },
  el("thead", {}, el("tr", {}, ["#", "step", "type", "status", "attempts", "worker", "started", "duration", "timeline"].map((t) => el("th", { text: t })))),
  tbody,
);
const detail = el("div", { id: "step-detail", class: "panel" }, el("p", { class: "muted", text: "Choose a step in the timeline or the graph." }));
const log = el("div", { class: "log", id: "log" });
const counter = el("span", { class: "muted", id: "event-count" });

app.replaceChildren(
  el("div", { class: "row" }, title, state),
  el(
    "div",
    { class: "grid2" },
    el("section", {}, facts, el("h2", { text: "Flow" }), graphBox),
    el(
      "section",
      {},
      el("div", { class: "panel" }, el("div", { class: "row" }, cancel), el("label", { for: "payload", class: "muted", text: "payload for a new run" }), again, el("div", { class: "row" }, rerun), actionNote),
      el("h2", { text: "Step" }),
      detail,
    ),
  ),
  el("h2", { text: "Timeline" }),
  el("div", { class: "timeline-box" }, timeline),
  el("h2", {}, "Events ", counter),
  log,
);

// --------------------------------------------------------------------------- events into runs

function newRun(step, event) {
  const run = {
    n: runs.length + 1,
    step,
    type: event.nodeType,
    status: "running",
    start: event.time,
    t0: Date.parse(event.time),
    t1: null,
    duration: null,
    attempts: 0,
    items: 0,
    worker: null,
    input: event.context?.input,
    result: undefined,
    error: null,
    events: [],
    tr: null,
  };
  runs.push(run);
  latest.set(step, run);
  fresh.push(run);
  return run;
}

function finish(run, status, event) {
  if (run.status !== "completed" && status === "completed") done += 1;
  run.status = status;
  run.t1 = Date.parse(event.time);
  run.duration = event.duration ?? (run.t1 - run.t0) / 1000;
}

function ingest(event) {
  if (seen.has(event.id)) return;
  seen.add(event.id);
  logged.push(event);
  if (event.type.startsWith("execution_")) {
    headerDirty = true;
    if (event.type === "execution_start") exec.start ||= event.time;
    else if (event.type === "execution_complete") Object.assign(exec, { status: "completed", end: event.time, result: event.result });
    else if (event.type === "execution_failed") Object.assign(exec, { status: "failed", end: event.time, error: event.error });
    else if (event.type === "execution_cancelled") {
      Object.assign(exec, { status: "cancelled", end: event.time, error: event.error ?? event.context?.reason });
      for (const run of runs) {
        if (run.status === "running") {
          finish(run, "cancelled", event);
          dirty.add(run);
        }
      }
    }
    return;
  }
  if (!event.step) return;
  let run = latest.get(event.step);
  if (event.type === "step_started" || !run) run = newRun(event.step, event);
  run.events.push(event);
  run.type ||= event.nodeType;
  switch (event.type) {
    case "action_started":
      run.attempts = Math.max(run.attempts + (event.attempt ? 0 : 1), event.attempt || 0);
      if (event.context?.input !== undefined) run.input = event.context.input;
      run.worker = event.worker ?? run.worker;
      break;
    case "action_error":
      run.error = event.error;
      run.worker = event.worker ?? run.worker;
      break;
    case "action_completed":
      run.worker = event.worker ?? run.worker;
      if (event.index !== null) run.items += 1;
      if (event.context?.input !== undefined && event.index === null) run.input = event.context.input;
      break;
    case "step_completed":
      finish(run, "completed", event);
      run.result = event.result;
      break;
    case "step_failed":
      finish(run, "failed", event);
      run.error = event.error ?? run.error;
      break;
    default:
      break;
  }
  dirty.add(run);
}

function take(events) {
  for (const raw of events) ingest(normalEvent(raw));
  draw();
}

// --------------------------------------------------------------------------- drawing

function rowOf(run) {
  const tr = el("tr", { class: "run", "data-step": run.step, "data-n": run.n }, Array.from({ length: 9 }, () => el("td")));
  tr.children[0].textContent = run.n;
  tr.children[1].textContent = run.step;
  tr.children[8].className = "bar";
  tr.children[8].append(el("div", { class: "track" }, el("div")));
  tr.addEventListener("click", () => select(run));
  run.tr = tr;
  return tr;
}

function scale() {
  const t0 = Date.parse(exec.start) || runs[0]?.t0 || Date.now();
  const t1 = exec.end ? Date.parse(exec.end) : Date.now();
  return { t0, span: Math.max(1, t1 - t0) };
}

function placeBar(run, { t0, span }) {
  const bar = run.tr.children[8].firstChild.firstChild;
  const end = run.t1 ?? (exec.end ? Date.parse(exec.end) : Date.now());
  const left = Math.min(100, Math.max(0, ((run.t0 - t0) / span) * 100));
  bar.style.left = `${left}%`;
  bar.style.width = `${Math.min(100 - left, Math.max(0, ((end - run.t0) / span) * 100))}%`;
  bar.className = `st-${run.status}`;
}

function fillRow(run, where) {
  const c = run.tr.children;
  c[2].textContent = run.type ?? "";
  if (run.tr.dataset.status !== run.status) {
    c[3].replaceChildren(badge(run.status));
    run.tr.dataset.status = run.status;
  }
  c[4].textContent = run.items ? `${run.attempts || 1} · ${run.items} items` : run.attempts || "";
  c[5].textContent = run.worker ?? "";
  c[6].textContent = run.start ? new Date(run.start).toLocaleTimeString() : "";
  c[7].textContent = run.duration === null ? "" : fmtDuration(run.duration);
  placeBar(run, where);
  graphNodes.get(run.step)?.setAttribute("class", `node st-${latest.get(run.step).status} t-${run.type}${selected?.step === run.step ? " selected" : ""}`);
}

function drawHeader() {
  state.replaceChildren(badge(exec.status));
  state.dataset.status = exec.status;
  const took = exec.start ? ((exec.end ? Date.parse(exec.end) : Date.now()) - Date.parse(exec.start)) / 1000 : null;
  facts.replaceChildren(
    el("dt", { text: "playbook" }),
    el("dd", {}, el("a", { href: catalogHref(exec.path, exec.version), text: `${exec.path} v${exec.version}` })),
    el("dt", { text: "started" }),
    el("dd", { text: fmtTime(exec.start) }),
    el("dt", { text: "ended" }),
    el("dd", { text: fmtTime(exec.end) || "–" }),
    el("dt", { text: "duration" }),
    el("dd", { text: fmtDuration(took) }),
    el("dt", { text: "steps" }),
    el("dd", { id: "step-count", text: `${runs.length} run, ${done} completed` }),
    ...(exec.error ? [el("dt", { text: "error" }), el("dd", { class: "error", text: exec.error })] : []),
    ...(exec.result !== undefined && exec.result !== null ? [el("dt", { text: "result" }), el("dd", {}, el("pre", { text: json(exec.result) }))] : []),
  );
  cancel.disabled = exec.status !== "running";
}

function drawLog() {
  if (!logged.length) return;
  const lines = logged.slice(-LOG_LINES).map((e) =>
    el("div", { "data-type": e.type }, `${new Date(e.time).toLocaleTimeString()}  ${e.type}${e.step ? `  ${e.step}` : ""}${e.attempt ? `  attempt ${e.attempt}` : ""}${e.index !== null ? `  item ${e.index}` : ""}${e.worker ? `  ${e.worker}` : ""}${e.error ? `  ${e.error}` : ""}`),
  );
  logged = [];
  const follows = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  log.append(...lines);
  while (log.childElementCount > LOG_LINES) log.firstElementChild.remove();
  if (follows) log.scrollTop = log.scrollHeight;
  counter.textContent = `(${seen.size})`;
}

function drawDetail(run) {
  const section = (name, value, cls) => (value === undefined || value === null ? [] : [el("h3", { text: name }), el("pre", { class: cls, id: `step-${name}`, text: typeof value === "string" ? value : json(value) })]);
  detail.replaceChildren(
    el("div", { class: "row" }, el("strong", { text: run.step }), badge(run.status), el("span", { class: "muted", text: run.type ?? "" })),
    el(
      "dl",
      { class: "facts" },
      el("dt", { text: "attempts" }),
      el("dd", { text: run.attempts || "–" }),
      el("dt", { text: "worker" }),
      el("dd", { text: run.worker ?? "–" }),
      el("dt", { text: "started" }),
      el("dd", { text: fmtTime(run.start) }),
      el("dt", { text: "duration" }),
      el("dd", { text: run.duration === null ? "running" : fmtDuration(run.duration) }),
      ...(run.items ? [el("dt", { text: "items" }), el("dd", { text: run.items })] : []),
    ),
    ...section("input", run.input),
    ...section("result", run.result),
    ...section("error", run.error, "error"),
    el("h3", { text: "events" }),
    el("pre", { text: run.events.map((e) => `${new Date(e.time).toLocaleTimeString()} ${e.type}${e.attempt ? ` #${e.attempt}` : ""}${e.index !== null ? ` item ${e.index}` : ""}`).join("\n") }),
  );
}

function select(run) {
  const before = selected;
  selected = run;
  before?.tr?.classList.remove("selected");
  run.tr?.classList.add("selected");
  if (before) dirty.add(latest.get(before.step));
  dirty.add(run);
  drawDetail(run);
  draw();
}

const draw = perFrame(() => {
  const where = scale();
  if (fresh.length) {
    const batch = fresh.slice(0, ROWS_PER_FRAME);
    fresh = fresh.slice(ROWS_PER_FRAME);
    const rows = document.createDocumentFragment();
    for (const run of batch) rows.append(rowOf(run));
    tbody.append(rows);
    for (const run of batch) dirty.add(run);
    if (fresh.length) draw();
  }
  const rescale = exec.status !== "running" ? lastRescale !== -1 : performance.now() - lastRescale > 1000;
  if (rescale) {
    for (const run of runs) if (run.tr && !dirty.has(run)) placeBar(run, where);
    lastRescale = exec.status === "running" ? performance.now() : -1;
  }
  for (const run of dirty) if (run.tr) fillRow(run, where);
  for (const run of [...dirty]) if (run.tr) dirty.delete(run);
  if (selected && selected.tr && selected === latest.get(selected.step)) drawDetail(selected);
  if (headerDirty || exec.status === "running") {
    drawHeader();
    headerDirty = false;
  }
  drawLog();
  timeline.dataset.runs = String(runs.length);
  timeline.dataset.drawn = String(tbody.childElementCount);
  timeline.dataset.completed = String(done);
});

// --------------------------------------------------------------------------- actions

cancel.addEventListener("click", async () => {
  cancel.disabled = true;
  try {
    const answer = await api(`/api/executions/${id}/cancel`, { method: "POST", data: { reason: "cancelled from the console" } });
    actionNote.replaceChildren(el("p", { class: "muted", text: `cancel asked: ${answer.status}` }));
  } catch (error) {
    actionNote.replaceChildren(el("p", { class: "error", text: error.message }));
    cancel.disabled = exec.status !== "running";
  }
});

rerun.addEventListener("click", async () => {
  let parameters;
  try {
    parameters = again.value.trim() ? JSON.parse(again.value) : {};
  } catch (error) {
    actionNote.replaceChildren(el("p", { class: "error", text: `the payload is not JSON: ${error.message}` }));
    return;
  }
  try {
    const started = await api("/api/executions/run", { method: "POST", data: { path: exec.path, version: exec.version, parameters } });
    location.assign(url(`/ui/executions/${started.execution_id}`));
  } catch (error) {
    actionNote.replaceChildren(el("p", { class: "error", text: error.message }));
  }
});

// --------------------------------------------------------------------------- start

async function drawPlaybook() {
  const segments = exec.path.split("/").map(encodeURIComponent).join("/");
  const entry = await api(`/api/catalog/playbooks/${segments}?version=${encodeURIComponent(exec.version)}`);
  graphNodes = drawGraph(graphBox, playbookGraph(entry.payload), (step) => {
    const run = latest.get(step);
    if (run) select(run);
  });
  for (const run of latest.values()) dirty.add(run);
  draw();
}

async function main() {
  const found = await api(`/api/executions/${encodeURIComponent(id)}`);
  Object.assign(exec, {
    status: found.status,
    start: found.start_time,
    end: found.end_time,
    path: found.path,
    version: found.version,
    result: found.result,
    error: found.error,
  });
  again.value = json(found.workload ?? {});
  document.title = `Execution ${id} · NoETL`;
  take(found.events);
  performance.mark("execution:first-render");
  drawPlaybook().catch(() => graphBox.replaceChildren(el("p", { class: "muted", text: "the playbook could not be read" })));
  const stop = new AbortController();
  follow(`/api/executions/${encodeURIComponent(id)}/events/stream`, (batch) => take(batch.map((m) => m.data)), stop.signal).catch(showError);
  setInterval(() => exec.status === "running" && draw(), 1000);
}

main().catch(showError);
