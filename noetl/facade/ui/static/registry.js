// The registry: every component of one kind, with its status and last heartbeat, read a page at a
// time from `GET /api/runtime/components` and polled again. The list is virtual: only the rows in
// view exist in the DOM, so ten thousand components cost what forty do.
import { VirtualList, ago, api, badge, clearError, el, fmtTime, perFrame, poll, showError } from "./console.js";

const KINDS = ["worker_pool", "broker", "server_api", "scheduler", "monitor"];
const PAGE = 1000;
const POLL_MS = 2000;

const params = new URLSearchParams(location.search);
const view = { kind: params.get("kind") || "worker_pool", status: params.get("status") || "" };
let items = [];
let loadedAt = null;
let generation = 0;

const app = document.getElementById("app");
const summary = el("span", { id: "summary", class: "muted" });
const list = el("div", { class: "vlist registry", id: "components" });
const rows = new VirtualList(list, { cells: 7, fill });
const tabs = el(
  "div",
  { class: "row tabs" },
  KINDS.map((kind) => el("button", { type: "button", "data-kind": kind, onclick: () => choose({ kind }), text: kind })),
);
const status = el(
  "select",
  { id: "status-filter", onchange: () => choose({ status: status.value }) },
  ["", "ready", "offline"].map((s) => el("option", { value: s, text: s || "any status" })),
);
app.replaceChildren(
  el("h1", { text: "Registry" }),
  tabs,
  el("div", { class: "row" }, status, summary),
  el(
    "div",
    { class: "vhead registry" },
    ["name", "status", "runtime", "capacity", "host / pid", "last heartbeat", "labels"].map((t) => el("span", { text: t })),
  ),
  list,
);

function choose(change) {
  Object.assign(view, change);
  const query = new URLSearchParams({ kind: view.kind, ...(view.status ? { status: view.status } : {}) });
  history.replaceState(null, "", `?${query}`);
  items = [];
  loadedAt = null;
  generation += 1;
  list.scrollTop = 0;
  draw();
  reload();
}

// Every page of the listing; the first load shows each page as it comes, a refresh swaps the
// whole list at once (so it never shrinks while it is read again).
async function load() {
  const mine = generation;
  const first = loadedAt === null;
  const started = performance.now();
  const found = [];
  for (let offset = 0; ; offset += PAGE) {
    const query = new URLSearchParams({ kind: view.kind, limit: PAGE, offset });
    if (view.status) query.set("status", view.status);
    const page = await api(`/api/runtime/components?${query}`);
    if (mine !== generation) return;
    found.push(...page.items);
    if (first) {
      items = found.slice();
      if (offset === 0) performance.mark("registry:first-page");
      draw();
    }
    if (page.items.length < PAGE) break;
  }
  items = found;
  loadedAt = new Date();
  clearError();
  performance.measure(first ? "registry:load" : "registry:refresh", { start: started });
  list.dataset.count = String(items.length);
  list.dataset.loads = String(Number(list.dataset.loads || 0) + 1);
  draw();
}

let reloads = null;
function reload() {
  reloads?.abort();
  reloads = new AbortController();
  poll(load, POLL_MS, reloads.signal);
}

function fill(row, c, _index) {
  const [name, state, runtime, capacity, host, beat, labels] = row.children;
  row.dataset.name = c.name;
  name.textContent = c.name;
  name.title = c.name;
  if (state.dataset.status !== c.status) {
    state.replaceChildren(badge(c.status));
    state.dataset.status = c.status;
  }
  runtime.textContent = c.runtime?.type ?? "";
  capacity.textContent = c.capacity ?? "";
  host.textContent = [c.runtime?.hostname, c.runtime?.pid].filter((v) => v !== undefined && v !== null).join(" / ");
  beat.textContent = ago(c.heartbeat);
  beat.title = fmtTime(c.heartbeat);
  beat.dataset.heartbeat = c.heartbeat ?? "";
  labels.textContent = c.labels ? Object.entries(c.labels).map(([k, v]) => `${k}=${v}`).join(" ") : "";
}

const draw = perFrame(() => {
  for (const button of tabs.children) button.classList.toggle("active", button.dataset.kind === view.kind);
  status.value = view.status;
  const ready = items.reduce((n, c) => n + (c.status === "ready" ? 1 : 0), 0);
  summary.textContent =
    `${items.length} ${view.kind}${items.length === 1 ? "" : "s"}: ${ready} ready, ${items.length - ready} not` +
    (loadedAt ? ` · read ${loadedAt.toLocaleTimeString()}` : " · reading…");
  rows.items = items;
  rows.render();
});

setInterval(draw, 1000); // the heartbeats' ages
choose({});
window.addEventListener("unhandledrejection", (event) => showError(event.reason));
