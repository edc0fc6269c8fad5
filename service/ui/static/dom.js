// Tuneplane dashboard, 1 of 5: the namespace the other scripts share, and small DOM
// helpers. No build step, no dependencies. Everything tenant-supplied is rendered as text
// nodes (never innerHTML). The scripts load in order (index.html, `defer`): dom.js,
// charts.js, session.js, job.js, app.js; each reads what the earlier ones put here.
"use strict";

window.Tuneplane = {};

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

  function badge(status) {
    return el("span", { class: `badge ${String(status).replace(/[^a-z_]/g, "")}` }, status);
  }

  function table(columns, rows, attrs) {
    return el(
      "table",
      attrs || {},
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", {}, c)))),
      el(
        "tbody",
        {},
        rows.map((cells) => el("tr", {}, cells.map((c) => (c instanceof Node && c.tagName === "TD" ? c : el("td", {}, c ?? "-"))))),
      ),
    );
  }

  function jobLink(id) {
    return el("a", { href: `#/jobs/${encodeURIComponent(id)}` }, id);
  }

  function modelLink(id) {
    return el("a", { href: `#/models/${encodeURIComponent(id)}` }, id);
  }

  function fields(pairs) {
    return el(
      "dl",
      { class: "fields" },
      pairs.filter(([, v]) => v !== undefined).flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v ?? "-")]),
    );
  }

  function json(value) {
    return value === null || value === undefined ? "-" : JSON.stringify(value);
  }

  const $ = (id) => document.getElementById(id);

  window.Tuneplane.dom = { el, svg, when, badge, table, jobLink, modelLink, fields, json, $ };
})();
