// A playbook at one version: its flow drawn as a graph (each step with its type, each transition
// with its `when`), its YAML (edit, validate, register a new version), and a form that runs it.
import { api, catalogHref, drawGraph, el, fmtTime, json, playbookForm, playbookGraph, showError, url } from "./console.js";

const app = document.getElementById("app");
const path = decodeURIComponent(location.pathname.replace(/^.*?\/ui\/catalog\//, "")).replace(/^\/+|\/+$/g, "");
const asked = new URLSearchParams(location.search).get("version") || "latest";

async function main() {
  const q = (version) => `/api/catalog/playbooks/${path.split("/").map(encodeURIComponent).join("/")}?version=${version}`;
  const entry = await api(q(asked));
  const latest = asked === "latest" ? entry : await api(q("latest"));
  const versions = el(
    "select",
    { id: "version", onchange: () => location.assign(catalogHref(path, versions.value)) },
    Array.from({ length: latest.version }, (_, i) => latest.version - i).map((v) =>
      el("option", { value: v, selected: v === entry.version, text: `v${v}${v === latest.version ? " (latest)" : ""}` }),
    ),
  );
  const graphBox = el("div", { class: "graph-box", id: "graph" });
  const yaml = el("textarea", { id: "yaml", rows: 22, spellcheck: "false" });
  yaml.value = entry.content;
  const check = el("div", { id: "check" });
  const payload = el("textarea", { id: "payload", rows: 6, spellcheck: "false" });
  payload.value = json(entry.payload?.workload ?? {});
  const merge = el("input", { type: "checkbox", id: "merge" });
  const ran = el("div", { id: "ran" });
  const run = async () => {
    let parameters;
    try {
      parameters = payload.value.trim() ? JSON.parse(payload.value) : {};
    } catch (error) {
      ran.replaceChildren(el("p", { class: "error", text: `the payload is not JSON: ${error.message}` }));
      return;
    }
    try {
      const started = await api("/api/executions/run", {
        method: "POST",
        data: { path: entry.path, version: String(entry.version), parameters, merge: merge.checked },
      });
      location.assign(url(`/ui/executions/${started.execution_id}`));
    } catch (error) {
      ran.replaceChildren(el("p", { class: "error", text: error.message }));
    }
  };
  const graph = playbookGraph(entry.payload);
  app.replaceChildren(
    el("h1", {}, entry.path, " ", versions),
    el(
      "div",
      { class: "row muted" },
      `${entry.kind} · ${graph.nodes.length} steps · registered ${fmtTime(entry.created_at)} · `,
      el("a", { href: url(`/ui/executions?path=${encodeURIComponent(entry.path)}`), text: "its executions" }),
    ),
    el(
      "div",
      { class: "grid2" },
      el("section", {}, el("h2", { text: "Flow" }), graphBox),
      el(
        "section",
        {},
        el(
          "div",
          { class: "panel" },
          el("h2", { text: "Run" }),
          el("label", { for: "payload", class: "muted", text: "payload (JSON: the workload's keys it overrides)" }),
          payload,
          el("div", { class: "row" }, el("button", { type: "button", id: "run", class: "primary", onclick: run, text: "Run" }), el("label", {}, merge, " deep merge")),
          ran,
        ),
        el("h2", { text: "YAML" }),
        yaml,
        playbookForm(yaml, check, (done) => location.assign(catalogHref(done.path, done.version))),
        check,
      ),
    ),
  );
  drawGraph(graphBox, graph);
  document.title = `${entry.path} · NoETL`;
}

main().catch(showError);
