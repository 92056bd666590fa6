// Executions, newest first, filtered by status and playbook path, a page at a time, polled so each
// one's status stays live. Rows are kept by id and changed in place.
import { api, badge, catalogHref, clearError, el, fmtDuration, fmtTime, poll, url } from "./console.js";

const PAGE = 50;
const POLL_MS = 2000;
const params = new URLSearchParams(location.search);
const view = { status: params.get("status") || "", path: params.get("path") || "", offset: Number(params.get("offset") || 0) };

const app = document.getElementById("app");
const status = el(
  "select",
  { id: "status-filter" },
  ["", "running", "completed", "failed", "cancelled"].map((s) => el("option", { value: s, text: s || "any status" })),
);
status.value = view.status;
const path = el("input", { id: "path-filter", placeholder: "playbook path", size: 32, value: view.path });
const body = el("tbody");
const pager = el("div", { class: "row" });
const note = el("span", { class: "muted" });
const rows = new Map();

app.replaceChildren(
  el("h1", { text: "Executions" }),
  el("div", { class: "row" }, status, path, note),
  el(
    "table",
    { id: "executions" },
    el("thead", {}, el("tr", {}, ["id", "playbook", "version", "status", "started", "ended", "duration", "error"].map((t) => el("th", { text: t })))),
    body,
  ),
  pager,
);

function apply(change) {
  Object.assign(view, change);
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(view)) if (v) query.set(k, v);
  history.replaceState(null, "", `?${query}`);
  load();
}
status.addEventListener("change", () => apply({ status: status.value, offset: 0 }));
path.addEventListener("change", () => apply({ path: path.value.trim(), offset: 0 }));

function row(item) {
  let tr = rows.get(item.execution_id);
  if (!tr) {
    tr = el("tr", { "data-id": item.execution_id }, Array.from({ length: 8 }, () => el("td")));
    rows.set(item.execution_id, tr);
  }
  const [id, playbook, version, state, started, ended, took, error] = tr.children;
  if (!id.firstChild) {
    id.append(el("a", { href: url(`/ui/executions/${item.execution_id}`), text: item.execution_id }));
    playbook.append(el("a", { href: catalogHref(item.path, item.version), text: item.path }));
    version.textContent = item.version;
    started.textContent = fmtTime(item.start_time);
  }
  if (tr.dataset.status !== item.status) {
    state.replaceChildren(badge(item.status));
    tr.dataset.status = item.status;
  }
  ended.textContent = fmtTime(item.end_time);
  const end = item.end_time ? new Date(item.end_time) : new Date();
  took.textContent = fmtDuration((end - new Date(item.start_time)) / 1000);
  error.textContent = item.error ? String(item.error).slice(0, 80) : "";
  error.title = item.error || "";
  return tr;
}

async function load() {
  const query = new URLSearchParams({ limit: PAGE, offset: view.offset });
  if (view.status) query.set("status", view.status);
  if (view.path) query.set("path", view.path);
  const answer = await api(`/api/executions?${query}`);
  clearError();
  const shown = answer.items.map(row);
  const keep = new Set(answer.items.map((i) => i.execution_id));
  for (const id of rows.keys()) if (!keep.has(id)) rows.delete(id);
  body.replaceChildren(...shown);
  if (!shown.length) {
    body.append(el("tr", {}, el("td", { colspan: 8, class: "muted", text: "No executions. Run a playbook from its page in the catalog." })));
  }
  note.textContent = `read ${new Date().toLocaleTimeString()}`;
  pager.replaceChildren(
    el("button", { type: "button", disabled: view.offset === 0, onclick: () => apply({ offset: Math.max(0, view.offset - PAGE) }), text: "← newer" }),
    el("span", { class: "muted", text: shown.length ? `${view.offset + 1}–${view.offset + shown.length}` : "" }),
    el("button", { type: "button", disabled: shown.length < PAGE, onclick: () => apply({ offset: view.offset + PAGE }), text: "older →" }),
  );
}

poll(load, POLL_MS);
