// The catalog: its entries (every registered version, newest first, a page at a time), and a form
// that validates or registers a playbook (`POST /api/catalog/playbooks/validate`, `/register`).
import { api, catalogHref, clearError, el, fmtTime, playbookForm, showError } from "./console.js";

const PAGE = 50;
let offset = 0;
// `examples/hello_world.yaml`, for a first try.
const EXAMPLE = `apiVersion: noetl.io/v1
kind: Playbook
metadata:
  name: hello_world
  path: examples/hello_world
workload:
  message: "Hello World"
workflow:
  - step: start
    next:
      - step: greet
  - step: greet
    type: python
    code: |
      def main(message):
          return {"status": "success", "data": {"message": message}}
    data:
      message: "{{ workload.message }}"
    next:
      - step: shout
  - step: shout
    type: python
    code: |
      def main(text):
          return {"status": "success", "data": {"loud": text.upper() + "!"}}
    data:
      text: "{{ greet.data.message }}"
    next:
      - step: end
  - step: end
`;

const app = document.getElementById("app");
const yaml = el("textarea", { id: "yaml", rows: 16, spellcheck: "false", placeholder: "apiVersion: noetl.io/v1\nkind: Playbook\n..." });
const file = el("input", { type: "file", id: "file", accept: ".yaml,.yml,text/yaml" });
const check = el("div", { id: "check" });
const filter = el("input", { id: "path-filter", placeholder: "filter by path", size: 30 });
const body = el("tbody");
const pager = el("div", { class: "row" });

app.replaceChildren(
  el("h1", { text: "Catalog" }),
  el(
    "div",
    { class: "grid2" },
    el(
      "section",
      {},
      el("div", { class: "row" }, filter),
      el("table", { id: "entries" }, el("thead", {}, el("tr", {}, ["path", "version", "kind", "registered"].map((t) => el("th", { text: t })))), body),
      pager,
    ),
    el(
      "section",
      { class: "panel" },
      el("h2", { text: "Register a playbook" }),
      el("div", { class: "row" }, file, el("button", { type: "button", id: "example", class: "link-button", onclick: () => (yaml.value = EXAMPLE), text: "the hello-world example" })),
      yaml,
      playbookForm(yaml, check, () => list().catch(showError)),
      check,
    ),
  ),
);

file.addEventListener("change", async () => {
  if (file.files[0]) yaml.value = await file.files[0].text();
});

async function list() {
  const answer = await api(`/api/catalog/list?limit=${PAGE}&offset=${offset}`);
  clearError();
  const wanted = filter.value.trim();
  const entries = answer.entries.filter((e) => !wanted || e.path.includes(wanted));
  body.replaceChildren(
    ...entries.map((e) =>
      el(
        "tr",
        { "data-path": e.path },
        el("td", {}, el("a", { href: catalogHref(e.path, e.version), text: e.path })),
        el("td", { text: e.version }),
        el("td", { text: e.kind }),
        el("td", { text: fmtTime(e.created_at) }),
      ),
    ),
  );
  if (!answer.entries.length && !offset) {
    body.append(el("tr", {}, el("td", { colspan: 4, class: "muted", text: "Nothing registered yet: paste a playbook, choose its file or take the hello-world example, and register it." })));
  }
  pager.replaceChildren(
    el("button", { type: "button", disabled: offset === 0, onclick: () => turn(-PAGE), text: "← newer" }),
    el("span", { class: "muted", text: `${offset + 1}–${offset + answer.entries.length}` }),
    el("button", { type: "button", disabled: answer.entries.length < PAGE, onclick: () => turn(PAGE), text: "older →" }),
  );
}

function turn(by) {
  offset = Math.max(0, offset + by);
  list().catch(showError);
}

filter.addEventListener("input", () => list().catch(showError));
list().catch(showError);
