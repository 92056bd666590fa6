// One execution: its playbook's graph coloured by each step's status, a timeline of the steps it
// ran (durations, attempts, items), each step's input, result and error, and its events live from
// the SSE stream; cancel it, or run it again with a payload.
//
// Events are folded into step runs as they come; the DOM is touched once per animation frame: the
// timeline is a virtual list (only the rows in view exist), the graph's nodes change class only
// when their step changed, so a run of a thousand steps stays fluid.
import {
  VirtualList,
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
const id = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop());

const exec = { status: "running", start: null, end: null, path: "", version: "", result: undefined, error: null };
const seen = new Set();
const runs = [];
const latest = new Map(); // step name -> its latest run
const dirty = new Set(); // runs whose graph node may need a new colour
let logged = [];
let headerDirty = true;
let selected = null;
let graphNodes = new Map();
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
const timeline = el("div", { class: "vlist timeline", id: "timeline" });
const rows = new VirtualList(timeline, { cells: 9, fill: fillRow });
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
  el(
    "div",
    { class: "vhead timeline" },
    ["#", "step", "type", "status", "attempts", "worker", "started", "duration", "timeline"].map((t) => el("span", { text: t })),
  ),
  timeline,
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
  };
  runs.push(run);
  latest.set(step, run);
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

function scale() {
  const t0 = Date.parse(exec.start) || runs[0]?.t0 || Date.now();
  const t1 = exec.end ? Date.parse(exec.end) : Date.now();
  return { t0, span: Math.max(1, t1 - t0) };
}

let where = scale();

function fillRow(row, run) {
  const [n, step, type, status, attempts, worker, started, took, track] = row.children;
  if (row.dataset.n !== String(run.n)) {
    row.dataset.n = run.n;
    row.dataset.step = run.step;
    n.textContent = run.n;
    step.textContent = run.step;
    step.title = run.step;
    started.textContent = run.start ? new Date(run.start).toLocaleTimeString() : "";
    if (!track.firstChild) track.append(el("div", { class: "track" }, el("div")));
  }
  type.textContent = run.type ?? "";
  if (row.dataset.status !== run.status) {
    status.replaceChildren(badge(run.status));
    row.dataset.status = run.status;
  }
  attempts.textContent = run.items ? `${run.attempts || 1} · ${run.items} items` : run.attempts || "";
  worker.textContent = run.worker ?? "";
  worker.title = run.worker ?? "";
  took.textContent = run.duration === null ? "" : fmtDuration(run.duration);
  row.classList.toggle("selected", run === selected);
  const bar = track.firstChild.firstChild;
  const end = run.t1 ?? (exec.end ? Date.parse(exec.end) : Date.now());
  const left = Math.min(100, Math.max(0, ((run.t0 - where.t0) / where.span) * 100));
  bar.style.left = `${left}%`;
  bar.style.width = `${Math.min(100 - left, Math.max(0, ((end - run.t0) / where.span) * 100))}%`;
  bar.className = `st-${run.status}`;
}

function colour(step) {
  const node = graphNodes.get(step);
  const wanted = `node st-${latest.get(step).status} t-${node?.dataset.type}${selected?.step === step ? " selected" : ""}`;
  if (node && node.getAttribute("class") !== wanted) node.setAttribute("class", wanted);
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
    el("dd", { id: "step-count", text: `${runs.length} started, ${done} completed` }),
    ...(exec.error ? [el("dt", { text: "error" }), el("dd", { class: "error", text: exec.error })] : []),
    ...(exec.result !== undefined && exec.result !== null ? [el("dt", { text: "result" }), el("dd", {}, el("pre", { text: json(exec.result) }))] : []),
  );
  cancel.disabled = exec.status !== "running";
}

let detailShown = null;

function drawLog(follows) {
  if (!logged.length) return;
  const lines = logged.slice(-LOG_LINES).map((e) =>
    el("div", { "data-type": e.type }, `${new Date(e.time).toLocaleTimeString()}  ${e.type}${e.step ? `  ${e.step}` : ""}${e.attempt ? `  attempt ${e.attempt}` : ""}${e.index !== null ? `  item ${e.index}` : ""}${e.worker ? `  ${e.worker}` : ""}${e.error ? `  ${e.error}` : ""}`),
  );
  logged = [];
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
  if (before) dirty.add(latest.get(before.step));
  dirty.add(run);
  detailShown = null;
  draw();
}

timeline.addEventListener("click", (event) => {
  const row = event.target.closest(".vrow");
  if (row) select(runs[Number(row.dataset.n) - 1]);
});

const draw = perFrame(() => {
  const follows = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
  where = scale();
  rows.items = runs;
  rows.render();
  if (selected && (detailShown !== selected || dirty.has(selected))) {
    drawDetail(selected);
    detailShown = selected;
  }
  for (const run of dirty) colour(run.step);
  dirty.clear();
  if (headerDirty || exec.status === "running") {
    drawHeader();
    headerDirty = false;
  }
  drawLog(follows);
  timeline.dataset.runs = String(runs.length);
  timeline.dataset.completed = String(done);
});

// Shows step `name`'s latest run in the timeline and its details (for a click in the graph).
function reveal(name) {
  const run = latest.get(name);
  if (!run) return;
  rows.show(run.n - 1);
  select(run);
}

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
  graphNodes = drawGraph(graphBox, playbookGraph(entry.payload), reveal, (step) => latest.get(step)?.status ?? "pending");
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
