// Tuneplane dashboard: the namespace the other scripts share, and small DOM helpers. No
// build step, no dependencies. Everything tenant-supplied is rendered as text nodes (never
// innerHTML). The scripts load in index.html's order (`defer`), dom.js first and app.js
// last; each reads what the earlier ones put here. A page script registers its pages in
// `Tuneplane.pages` (name -> async (view, gen, route)); app.js routes to them.
"use strict";

window.Tuneplane = { pages: {} };

(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  function when(ts) {
    return ts ? new Date(ts * 1000).toLocaleString() : "-";
  }

  // How long ago (or until) a unix time, as a person says it.
  function relative(ts) {
    const delta = Math.round(ts - Date.now() / 1000);
    const span = Math.abs(delta);
    if (span < 45) return delta <= 0 ? "just now" : "in a few seconds";
    const [n, unit] =
      span < 90 * 60 ? [Math.round(span / 60), "min"] : span < 36 * 3600 ? [Math.round(span / 3600), "h"] : [Math.round(span / 86400), "d"];
    return delta < 0 ? `${n} ${unit} ago` : `in ${n} ${unit}`;
  }

  // A time as "3 min ago", the absolute time on hover.
  function ago(ts) {
    if (!ts) return "-";
    return el("time", { datetime: new Date(ts * 1000).toISOString(), title: when(ts), class: "nowrap" }, relative(ts));
  }

  // A long id shortened to its start and end (ids are unique at both); the full id on
  // hover, in `data-id` and behind a copy button. `href`: the id as a link.
  function shortId(id, href) {
    if (id === null || id === undefined || id === "") return "-";
    const text = id.length > 22 ? `${id.slice(0, 12)}…${id.slice(-6)}` : id;
    const label = href ? el("a", { href, title: id }, text) : el("span", { title: id }, text);
    return el("span", { class: "id nowrap", "data-id": id }, label, copyButton(id));
  }

  // Two overlapping sheets, drawn (a font may lack a copy glyph).
  function copyIcon() {
    const icon = svg("svg", { width: 12, height: 12, viewBox: "0 0 12 12", "aria-hidden": "true" });
    icon.append(svg("rect", { x: 3.5, y: 0.5, width: 8, height: 8, rx: 1.5, fill: "none", stroke: "currentColor" }));
    icon.append(svg("rect", { x: 0.5, y: 3.5, width: 8, height: 8, rx: 1.5, fill: "#fff", stroke: "currentColor" }));
    return icon;
  }

  function copyButton(text) {
    const button = el("button", { type: "button", class: "copy", title: "Copy", "aria-label": `Copy ${text}` }, copyIcon());
    button.addEventListener("click", async (event) => {
      event.preventDefault();
      event.stopPropagation();
      let done = "copied";
      try {
        await navigator.clipboard.writeText(text);
      } catch (_) {
        done = "no clipboard"; // an insecure origin: the id is still on hover
      }
      button.replaceChildren(el("span", { class: "copied" }, done));
      setTimeout(() => button.replaceChildren(copyIcon()), 1200);
    });
    return button;
  }

  // A long name (a fine-tuned model's id) that may wrap after its colons (and, as any
  // text, after a hyphen), never inside a word.
  function breakable(name) {
    if (name === null || name === undefined || name === "") return "-";
    const parts = String(name).split(/(?<=:)/);
    return el("span", { class: "name", title: String(name) }, parts.flatMap((p, i) => (i ? [el("wbr"), p] : [p])));
  }

  // An object as a key/value list: nested objects by dotted key, lists joined; a value
  // that is null or an empty object is left out.
  function kvList(value, attrs) {
    const pairs = [];
    const walk = (prefix, v) => {
      if (v === null || v === undefined) return;
      if (typeof v === "object" && !Array.isArray(v)) {
        for (const [k, inner] of Object.entries(v)) walk(prefix ? `${prefix}.${k}` : k, inner);
      } else {
        pairs.push([prefix, Array.isArray(v) ? v.join(", ") : String(v)]);
      }
    };
    walk("", value);
    if (!pairs.length) return "-";
    return el("dl", { class: "kv", ...(attrs || {}) }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  function badge(status) {
    return el("span", { class: `badge ${String(status).replace(/[^a-z_]/g, "")}` }, status);
  }

  // A table in a box that scrolls sideways when it is wider than the window. `columns`:
  // labels, or {label, cls} where cls goes on the column's cells too ("opt": a column a
  // phone leaves out; "nowrap"). A cell that is already a <td> is used as it is.
  function table(columns, rows, attrs) {
    const cols = columns.map((c) => (typeof c === "string" ? { label: c, cls: null } : c));
    const cell = (c, i) => {
      if (c instanceof Node && c.tagName === "TD") {
        if (cols[i] && cols[i].cls) c.classList.add(...cols[i].cls.split(" "));
        return c;
      }
      return el("td", { class: cols[i] && cols[i].cls }, c ?? "-");
    };
    return el(
      "div",
      { class: "scroll" },
      el(
        "table",
        attrs || {},
        el("thead", {}, el("tr", {}, cols.map((c) => el("th", { class: c.cls }, c.label)))),
        el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map(cell)))),
      ),
    );
  }

  // A job's id, shortened, linking to its page.
  function jobLink(id) {
    return shortId(id, `#/jobs/${encodeURIComponent(id)}`);
  }

  // A model's id, linking to its page (wrapping only after its colons; `data-model` holds
  // it whole).
  function modelLink(id) {
    return el("a", { href: `#/models/${encodeURIComponent(id)}`, "data-model": id }, breakable(id));
  }

  // The message of an API error, and the field it names (`param`), next to the field:
  // `form` holds elements with data-param; an error naming none is shown in `fallback`.
  function showFieldError(form, fallback, error) {
    for (const node of form.querySelectorAll(".field-error")) node.textContent = "";
    const target = error.param ? form.querySelector(`.field-error[data-param="${CSS.escape(error.param)}"]`) : null;
    const prefix = error.param && !target ? `${error.param}: ` : "";
    (target || fallback).textContent = `${prefix}${error.message}`;
    return target;
  }

  function fields(pairs) {
    return el(
      "dl",
      { class: "fields" },
      pairs.filter(([, v]) => v !== undefined).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "-")]),
    );
  }

  const $ = (id) => document.getElementById(id);

  window.Tuneplane.dom = {
    el, svg, when, ago, badge, table, shortId, copyButton, breakable, kvList, jobLink, modelLink, fields, showFieldError, $,
  };
})();
