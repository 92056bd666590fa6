// The console's shared module: the API client (with the bearer token), the SSE reader, a few DOM
// helpers, and the playbook graph (its steps and transitions, a layered layout, drawn as SVG).
// Every page script imports from here; nothing is fetched from anywhere but this facade.

const ROOT = document.body.dataset.root || "";
const TOKEN_KEY = "noetl.token";

// --------------------------------------------------------------------------- small helpers

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== undefined && child !== null && child !== false) {
      node.append(child instanceof Node ? child : String(child));
    }
  }
  return node;
}

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
export const escape = (text) => String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);

export const url = (path) => ROOT + path;

// A catalog entry's page (each segment of its path encoded; the path keeps its slashes).
export const catalogHref = (path, version) =>
  url(`/ui/catalog/${String(path).split("/").map(encodeURIComponent).join("/")}${version ? `?version=${version}` : ""}`);

export function fmtTime(iso) {
  if (!iso) return "";
  const when = new Date(iso);
  return Number.isNaN(when.getTime()) ? String(iso) : when.toLocaleString();
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds % 60)} s`;
}

export function ago(iso, now = Date.now()) {
  if (!iso) return "never";
  const seconds = Math.max(0, (now - new Date(iso).getTime()) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

export function json(value) {
  return value === undefined ? "" : JSON.stringify(value, null, 2);
}

export const badge = (status) => el("span", { class: `badge st-${status || "pending"}`, text: status || "pending" });

// Calls `draw` at most once per animation frame, however often it is asked for.
export function perFrame(draw) {
  let asked = false;
  return () => {
    if (asked) return;
    asked = true;
    requestAnimationFrame(() => {
      asked = false;
      draw();
    });
  };
}

// Runs `load` again `interval` ms after each run ends (never two at once), until `signal` aborts.
export async function poll(load, interval, signal) {
  while (!signal?.aborted) {
    const started = performance.now();
    try {
      await load();
    } catch (error) {
      showError(error);
    }
    const took = performance.now() - started;
    await sleep(Math.max(interval, 2 * took));
  }
}

export function showError(error) {
  let box = document.getElementById("error");
  if (!box) {
    box = el("p", { id: "error", class: "error" });
    document.querySelector("main").prepend(box);
  }
  box.textContent = error instanceof Error ? error.message : String(error);
}

export function clearError() {
  document.getElementById("error")?.remove();
}

// A list of fixed-height rows in a scrolling box: only the rows in view (and a few around them)
// exist, reused as the box scrolls, so its cost is that of a screenful whatever its length.
// `fill(row, item, index)` writes one row (its `cells` were made once); `render()` redraws now.
export class VirtualList {
  constructor(box, { rowHeight = 28, cells, fill, overscan = 8 }) {
    Object.assign(this, { box, rowHeight, cells, fill, overscan, items: [], pool: [] });
    this.spacer = el("div", { class: "spacer" });
    this.rows = el("div", { class: "rows" });
    box.append(this.spacer, this.rows);
    this.draw = perFrame(() => this.render());
    box.addEventListener("scroll", this.draw, { passive: true });
    window.addEventListener("resize", this.draw);
  }

  render() {
    // Read before writing: the reads are then no forced layout of whatever changed this frame.
    const top = this.box.scrollTop;
    const height = this.box.clientHeight;
    if (this.length !== this.items.length) {
      this.length = this.items.length;
      this.box.style.setProperty("--n", this.length);
      this.spacer.style.height = `${this.length * this.rowHeight}px`;
      this.draw(); // once more, at the box's new height
    }
    const first = Math.max(0, Math.floor(top / this.rowHeight) - this.overscan);
    const count = Math.max(0, Math.min(this.items.length - first, Math.ceil(height / this.rowHeight) + 2 * this.overscan));
    this.rows.style.transform = `translateY(${first * this.rowHeight}px)`;
    for (let i = 0; i < Math.max(count, this.pool.length); i++) {
      if (!this.pool[i]) {
        this.pool[i] = el("div", { class: "vrow" }, Array.from({ length: this.cells }, () => el("span")));
        this.rows.append(this.pool[i]);
      }
      const row = this.pool[i];
      row.hidden = i >= count;
      if (!row.hidden) this.fill(row, this.items[first + i], first + i);
    }
  }

  // Scrolls so that item `index` is in the middle of the box.
  show(index) {
    this.box.scrollTop = Math.max(0, index * this.rowHeight - this.box.clientHeight / 2);
    this.render();
  }
}

// --------------------------------------------------------------------------- the token

export const token = () => localStorage.getItem(TOKEN_KEY) || "";

let asking = null;

// Asks for a token once, however many requests were refused; resolves when one is saved.
export function askToken(why = "") {
  if (asking) return asking;
  const dialog = document.getElementById("token-dialog");
  document.getElementById("token-why").textContent = why;
  const input = document.getElementById("token-input");
  input.value = token();
  asking = new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        if (dialog.returnValue === "clear") localStorage.removeItem(TOKEN_KEY);
        else if (input.value.trim()) localStorage.setItem(TOKEN_KEY, input.value.trim());
        asking = null;
        resolve();
      },
      { once: true },
    );
  });
  dialog.showModal();
  input.focus();
  return asking;
}

function headers(extra = {}) {
  const found = { ...extra };
  if (token()) found.Authorization = `Bearer ${token()}`;
  return found;
}

function setConnected(ok, text) {
  const conn = document.getElementById("conn");
  conn.className = `conn ${ok ? "ok" : "down"}`;
  conn.textContent = ok ? "" : text;
}

// --------------------------------------------------------------------------- the API

export class ApiError extends Error {
  constructor(status, detail) {
    super(`HTTP ${status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    this.status = status;
    this.detail = detail;
  }
}

async function send(path, options) {
  try {
    const response = await fetch(url(path), options);
    setConnected(true);
    return response;
  } catch (error) {
    if (error.name !== "AbortError") setConnected(false, "API unreachable");
    throw error;
  }
}

async function body(response) {
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

// A JSON call of the API. A 401 asks for a token and tries again; a 202 (the command's outcome
// was late) is followed at its `Location` until the outcome is there.
export async function api(path, { method = "GET", data, signal } = {}) {
  for (;;) {
    const extra = data === undefined ? {} : { "Content-Type": "application/json" };
    const response = await send(path, {
      method,
      headers: headers(extra),
      body: data === undefined ? undefined : JSON.stringify(data),
      signal,
    });
    if (response.status === 401) {
      await askToken(token() ? "That token was refused." : "");
      continue;
    }
    const answer = await body(response);
    if (response.status === 202 && response.headers.get("location")) {
      return outcome(response.headers.get("location"), signal);
    }
    if (!response.ok) throw new ApiError(response.status, answer?.detail ?? answer);
    return answer;
  }
}

async function outcome(location, signal) {
  for (;;) {
    await sleep(500);
    const done = await api(location, { signal });
    if (done.state === "done") {
      if (done.status_code >= 400) throw new ApiError(done.status_code, done.response?.detail ?? done.response);
      return done.response;
    }
  }
}

// Follows a Server-Sent Events stream with fetch (EventSource cannot send the token), giving
// `onEvents` each chunk's events as one array; resumes after a drop with `Last-Event-ID`.
export async function follow(path, onEvents, signal) {
  let lastId = null;
  while (!signal?.aborted) {
    try {
      const extra = { Accept: "text/event-stream" };
      if (lastId !== null) extra["Last-Event-ID"] = lastId;
      const response = await send(path, { headers: headers(extra), signal });
      if (response.status === 401) {
        await askToken(token() ? "That token was refused." : "");
        continue;
      }
      if (!response.ok) throw new ApiError(response.status, (await body(response))?.detail);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replaceAll("\r\n", "\n");
        const batch = [];
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const message = parseBlock(block);
          if (message.id !== undefined) lastId = message.id;
          if (message.data !== undefined) batch.push(message);
        }
        if (batch.length) onEvents(batch);
      }
    } catch (error) {
      if (signal?.aborted) return;
      if (error instanceof ApiError && error.status < 500) throw error;
    }
    await sleep(2000);
  }
}

function parseBlock(block) {
  const message = {};
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "data") data.push(value);
    else if (field === "id") message.id = value;
    else if (field === "event") message.event = value;
  }
  if (data.length) {
    try {
      message.data = JSON.parse(data.join("\n"));
    } catch {
      message.data = data.join("\n");
    }
  }
  return message;
}

// An execution's event, whether it came flat (`GET /api/executions/{id}`) or as the bus's envelope
// (the SSE stream): one shape for the pages.
export function normalEvent(raw) {
  const flat = raw.event_type !== undefined;
  const fields = flat ? raw : { ...raw.payload };
  return {
    id: String(flat ? raw.event_id : raw.id),
    type: flat ? raw.event_type : raw.type,
    time: flat ? raw.timestamp : raw.time,
    step: fields.node_name ?? null,
    nodeType: fields.node_type ?? null,
    status: fields.status ?? null,
    duration: fields.duration ?? null,
    context: fields.context ?? null,
    result: fields.result,
    error: fields.error ?? null,
    index: fields.current_index ?? null,
    worker: fields.worker_id ?? null,
    attempt: fields.meta?.attempt ?? null,
  };
}

// --------------------------------------------------------------------------- the playbook graph

const ALIASES = { playbooks: "playbook", loop: "iterator" };

function stepType(raw, name) {
  if (typeof raw.type === "string" && raw.type.trim()) {
    const kind = raw.type.trim().toLowerCase();
    return ALIASES[kind] || kind;
  }
  if (raw.loop && typeof raw.loop === "object") return "iterator";
  return name === "start" || name === "end" ? name : "router";
}

function targets(value) {
  if (value === undefined || value === null) return [];
  return (Array.isArray(value) ? value : [value])
    .map((item) => (typeof item === "string" ? item : item?.step ?? item?.name))
    .filter((name) => typeof name === "string");
}

function condition(when) {
  return typeof when === "string" ? when.replace(/^\{\{\s*|\s*\}\}$/g, "") : String(when);
}

// The steps of a playbook document (its `workflow`) and its transitions, each with its `when`,
// read the way registration reads them: names, `{step, when}`, `{when, then, else}`, `{else}`.
export function playbookGraph(document) {
  const raw = document?.workflow ?? document?.steps ?? [];
  const nodes = [];
  const edges = [];
  for (const step of Array.isArray(raw) ? raw : []) {
    if (!step || typeof step !== "object") continue;
    const name = String(step.step ?? step.name ?? "");
    if (!name) continue;
    // A workbook step names its task; an iterator's task is an action of some type.
    const task = typeof step.task === "string" ? step.task : typeof step.task?.type === "string" ? step.task.type : null;
    nodes.push({ id: name, type: stepType(step, name), task });
    const next = step.next === undefined || step.next === null ? [] : [].concat(step.next);
    for (const item of next) {
      if (typeof item === "string") edges.push({ from: name, to: item, label: "" });
      else if (item && typeof item === "object" && ("then" in item || ("else" in item && !("step" in item)))) {
        const when = "when" in item ? condition(item.when) : "";
        for (const to of targets(item.then)) edges.push({ from: name, to, label: when });
        for (const to of targets(item.else)) edges.push({ from: name, to, label: when ? `not ${when}` : "else" });
      } else if (item && typeof item === "object") {
        const to = item.step ?? item.name;
        if (typeof to === "string") edges.push({ from: name, to, label: item.when === undefined || item.when === null ? "" : condition(item.when) });
      }
    }
  }
  return { nodes, edges };
}

const NODE_W = 168;
const NODE_H = 42;
const GAP_X = 28;
const GAP_Y = 56;
const MARGIN = 16;

// A layered layout in linear time (but for the per-layer sorts): back edges (those a depth-first
// walk from the first step finds going up) are set aside, every other edge points one or more
// layers down (the longest path from a root), and each layer is ordered by its parents' places.
export function layout(graph) {
  const ids = graph.nodes.map((n) => n.id);
  const index = new Map(ids.map((id, i) => [id, i]));
  const edges = graph.edges.filter((e) => index.has(e.from) && index.has(e.to));
  const out = ids.map(() => []);
  edges.forEach((e, i) => out[index.get(e.from)].push(i));
  // Back edges, by an iterative depth-first walk (start first, then whatever it did not reach).
  const state = new Uint8Array(ids.length); // 0 unseen, 1 on the stack, 2 done
  const back = new Uint8Array(edges.length);
  const first = index.has("start") ? index.get("start") : 0;
  const roots = [first, ...ids.keys()];
  for (const root of roots) {
    if (state[root] || !ids.length) continue;
    const stack = [[root, 0]];
    state[root] = 1;
    while (stack.length) {
      const top = stack[stack.length - 1];
      const [node, at] = top;
      if (at < out[node].length) {
        top[1] += 1;
        const edge = out[node][at];
        const to = index.get(edges[edge].to);
        if (state[to] === 1) back[edge] = 1;
        else if (state[to] === 0) {
          state[to] = 1;
          stack.push([to, 0]);
        }
      } else {
        state[node] = 2;
        stack.pop();
      }
    }
  }
  // Layers: the longest path over the forward edges (Kahn's order).
  const indegree = new Int32Array(ids.length);
  edges.forEach((e, i) => {
    if (!back[i]) indegree[index.get(e.to)] += 1;
  });
  const layer = new Int32Array(ids.length);
  const queue = [];
  ids.forEach((_, i) => {
    if (!indegree[i]) queue.push(i);
  });
  for (let head = 0; head < queue.length; head++) {
    const node = queue[head];
    for (const edge of out[node]) {
      if (back[edge]) continue;
      const to = index.get(edges[edge].to);
      layer[to] = Math.max(layer[to], layer[node] + 1);
      if (--indegree[to] === 0) queue.push(to);
    }
  }
  const layers = [];
  for (const node of queue) (layers[layer[node]] ||= []).push(node);
  // Order each layer by the mean place of its parents in the layers above.
  const place = new Float64Array(ids.length);
  const parents = ids.map(() => []);
  edges.forEach((e, i) => {
    if (!back[i]) parents[index.get(e.to)].push(index.get(e.from));
  });
  for (const nodes of layers) {
    if (!nodes) continue;
    const key = new Map(
      nodes.map((n, i) => [n, parents[n].length ? parents[n].reduce((s, p) => s + place[p], 0) / parents[n].length : i]),
    );
    nodes.sort((a, b) => key.get(a) - key.get(b));
    nodes.forEach((n, i) => {
      place[n] = i;
    });
  }
  const widest = Math.max(1, ...layers.map((l) => (l ? l.length : 0)));
  const width = widest * (NODE_W + GAP_X) - GAP_X + 2 * MARGIN;
  const at = new Map();
  layers.forEach((nodes, depth) => {
    if (!nodes) return;
    const offset = (width - (nodes.length * (NODE_W + GAP_X) - GAP_X)) / 2;
    nodes.forEach((n, i) => {
      at.set(ids[n], { x: offset + i * (NODE_W + GAP_X), y: MARGIN + depth * (NODE_H + GAP_Y) });
    });
  });
  const height = MARGIN * 2 + layers.length * (NODE_H + GAP_Y) - GAP_Y;
  return { at, width, height, edges: edges.map((e, i) => ({ ...e, back: Boolean(back[i]) })) };
}

function edgePath(from, to, back) {
  if (back) {
    const x1 = from.x + NODE_W;
    const y1 = from.y + NODE_H / 2;
    const x2 = to.x + NODE_W;
    const y2 = to.y + NODE_H / 2;
    const bend = Math.max(x1, x2) + 40 + Math.abs(y1 - y2) / 8;
    return { d: `M${x1},${y1} C${bend},${y1} ${bend},${y2} ${x2 + 6},${y2}`, lx: bend - 8, ly: (y1 + y2) / 2 };
  }
  const x1 = from.x + NODE_W / 2;
  const y1 = from.y + NODE_H;
  const x2 = to.x + NODE_W / 2;
  const y2 = to.y - 6;
  const dy = Math.max(24, (y2 - y1) / 2);
  return { d: `M${x1},${y1} C${x1},${y1 + dy} ${x2},${y2 - dy} ${x2},${y2}`, lx: (x1 + x2) / 2, ly: (y1 + y2) / 2 };
}

const clip = (text, n) => (text.length > n ? `${text.slice(0, n - 1)}…` : text);

// Draws `graph` into `container` as one SVG (built as text, set once), each node coloured by
// `statusOf(step)`; returns the node elements by step name, so a page can colour them again
// without touching the rest.
export function drawGraph(container, graph, onSelect, statusOf = () => "pending") {
  const { at, width, height, edges } = layout(graph);
  const parts = [
    `<svg class="graph" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`,
    `<defs><marker id="arrow" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker></defs>`,
  ];
  for (const e of edges) {
    const { d, lx, ly } = edgePath(at.get(e.from), at.get(e.to), e.back);
    parts.push(`<path class="edge${e.back ? " back" : ""}" d="${d}" marker-end="url(#arrow)"><title>${escape(`${e.from} → ${e.to}${e.label ? ` when ${e.label}` : ""}`)}</title></path>`);
    if (e.label) {
      parts.push(`<g><title>${escape(e.label)}</title><text class="when" x="${lx}" y="${ly}" text-anchor="middle">${escape(clip(e.label, 26))}</text></g>`);
    }
  }
  for (const node of graph.nodes) {
    const { x, y } = at.get(node.id);
    const type = node.task ? `${node.type}: ${node.task}` : node.type;
    parts.push(
      `<g class="node st-${statusOf(node.id)} t-${escape(node.type)}" data-step="${escape(node.id)}" data-type="${escape(node.type)}" transform="translate(${x},${y})">` +
        `<rect width="${NODE_W}" height="${NODE_H}" rx="6"/>` +
        `<text class="name" x="10" y="17">${escape(clip(node.id, 22))}</text>` +
        `<text class="type" x="10" y="33">${escape(clip(type, 26))}</text>` +
        `<title>${escape(`${node.id} (${type})`)}</title></g>`,
    );
  }
  parts.push("</svg>");
  container.innerHTML = parts.join("");
  const nodes = new Map();
  for (const g of container.querySelectorAll("g.node")) nodes.set(g.dataset.step, g);
  if (onSelect) {
    container.addEventListener("click", (event) => {
      const g = event.target.closest?.("g.node");
      if (g) onSelect(g.dataset.step);
    });
  }
  return nodes;
}

// --------------------------------------------------------------------------- shared forms

// Validate and Register buttons for a playbook's YAML in `textarea`; what came of it goes to `result`.
export function playbookForm(textarea, result, onRegistered) {
  const validate = async () => {
    result.replaceChildren(el("span", { class: "muted", text: "checking…" }));
    const answer = await api("/api/catalog/playbooks/validate", { method: "POST", data: { content: textarea.value } });
    result.replaceChildren(
      answer.valid
        ? el("p", { class: "ok", text: `valid: ${answer.path}, ${answer.steps} steps` })
        : el("div", {}, el("p", { class: "error", text: "not valid:" }), el("ul", { class: "error" }, answer.errors.map((e) => el("li", { text: e })))),
    );
    result.dataset.valid = String(answer.valid);
  };
  const register = async () => {
    result.replaceChildren(el("span", { class: "muted", text: "registering…" }));
    try {
      const done = await api("/api/catalog/register", { method: "POST", data: { content: textarea.value } });
      const link = el("a", { href: catalogHref(done.path, done.version), text: `${done.path} v${done.version}` });
      result.replaceChildren(el("p", { class: "ok" }, "registered ", link));
      result.dataset.registered = `${done.path}@${done.version}`;
      onRegistered?.(done);
    } catch (error) {
      result.replaceChildren(el("p", { class: "error", text: error.message }));
    }
  };
  return el(
    "div",
    { class: "row" },
    el("button", { type: "button", id: "validate", onclick: () => validate().catch(showError), text: "Validate" }),
    el("button", { type: "button", id: "register", class: "primary", onclick: register, text: "Register" }),
  );
}

// --------------------------------------------------------------------------- the page frame

for (const link of document.querySelectorAll("[data-nav]")) {
  if (link.dataset.nav.split(" ").includes(document.body.dataset.page)) link.classList.add("active");
}
document.getElementById("token-button").addEventListener("click", () => askToken());
