// Tuneplane dashboard: the usage page. Tokens by day (trained, and prompt and completion
// tokens served) as stacked bars, and the period's totals by model and kind.
"use strict";

(() => {
  const { el, svg, table, modelLink } = window.Tuneplane.dom;
  const { api, current } = window.Tuneplane.session;

  const PARTS = [
    { key: "trained_tokens", name: "trained", cls: "bar-trained" },
    { key: "input_tokens", name: "prompt (served)", cls: "bar-input" },
    { key: "output_tokens", name: "completion (served)", cls: "bar-output" },
  ];
  const count = (n) => Math.round(n).toLocaleString();
  const day = (ts) => new Date(ts * 1000).toISOString().slice(0, 10);

  // A day's sums over its results (one per model and kind).
  function dayTotals(bucket) {
    const sums = { start: bucket.start_time };
    for (const part of PARTS) sums[part.key] = bucket.results.reduce((n, r) => n + r[part.key], 0);
    return sums;
  }

  // One stacked bar per day; each part's count in its title (hover) and a data attribute.
  function barChart(days) {
    const W = 860;
    const H = 240;
    const m = { left: 64, right: 12, top: 12, bottom: 34 };
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "tokens by day", id: "usage-chart" });
    const total = (d) => PARTS.reduce((n, p) => n + d[p.key], 0);
    const top = Math.max(1, ...days.map(total));
    const slot = (W - m.left - m.right) / days.length;
    const sy = (y) => H - m.bottom - (y / top) * (H - m.top - m.bottom);
    for (let i = 0; i <= 4; i += 1) {
      const y = (top * i) / 4;
      root.append(svg("line", { x1: m.left, x2: W - m.right, y1: sy(y), y2: sy(y), class: "grid" }));
      root.append(svg("text", { x: m.left - 6, y: sy(y) + 4, "text-anchor": "end", class: "tick" }, count(y)));
    }
    const labelEvery = Math.max(1, Math.ceil(days.length / 10));
    days.forEach((d, i) => {
      const x = m.left + i * slot + slot * 0.15;
      const group = svg("g", { class: "day", "data-day": day(d.start), "data-total": total(d) });
      let base = 0;
      for (const part of PARTS) {
        const value = d[part.key];
        if (value > 0) {
          const rect = svg("rect", { x, width: slot * 0.7, y: sy(base + value), height: sy(base) - sy(base + value), class: part.cls });
          rect.append(svg("title", {}, `${day(d.start)}: ${count(value)} ${part.name} tokens`));
          group.append(rect);
        }
        base += value;
      }
      root.append(group);
      if (i % labelEvery === 0) {
        root.append(svg("text", { x: x + slot * 0.35, y: H - m.bottom + 16, "text-anchor": "middle", class: "tick" }, day(d.start).slice(5)));
      }
    });
    root.append(svg("line", { x1: m.left, x2: W - m.right, y1: H - m.bottom, y2: H - m.bottom, class: "axis" }));
    return root;
  }

  function legend() {
    return el("div", { class: "legend" }, ...PARTS.map((p) => el("span", {}, el("span", { class: `swatch ${p.cls}` }), `${p.name} tokens`)));
  }

  // The period's totals per model and kind, over every day's results.
  function byModel(buckets) {
    const rows = new Map();
    for (const r of buckets.flatMap((b) => b.results)) {
      const key = `${r.model}\u0000${r.kind}`;
      const sums = rows.get(key) || { model: r.model, kind: r.kind, num_model_requests: 0, input_tokens: 0, output_tokens: 0, trained_tokens: 0, worker_seconds: 0, gpu_seconds: 0, jobs: 0 };
      for (const name of Object.keys(sums)) if (typeof sums[name] === "number") sums[name] += r[name];
      rows.set(key, sums);
    }
    return [...rows.values()].sort((a, b) => a.model.localeCompare(b.model) || a.kind.localeCompare(b.kind));
  }

  async function usagePage(view, gen, where) {
    const days = Number(where.query.get("days")) === 30 ? 30 : 7;
    const page = await api(`/v1/usage?bucket_width=1d&limit=${days}&group_by=model&group_by=kind`);
    if (!current(gen)) return;
    const totals = page.data.map(dayTotals);
    const rows = byModel(page.data).map((r) => [
      modelLink(r.model),
      r.kind,
      count(r.num_model_requests),
      count(r.input_tokens),
      count(r.output_tokens),
      count(r.trained_tokens),
      r.jobs ? count(r.jobs) : "-",
      r.worker_seconds.toFixed(1),
      r.gpu_seconds.toFixed(1),
    ]);
    const columns = [
      "Model",
      "Kind",
      "Requests",
      "Prompt tokens",
      "Completion tokens",
      "Trained tokens",
      { label: "Jobs", cls: "opt" },
      { label: "Worker s", cls: "opt" },
      { label: "GPU s", cls: "opt" },
    ];
    const other = days === 7 ? 30 : 7;
    view.replaceChildren(
      el("h1", {}, "Usage"),
      el("p", { class: "muted" }, `The last ${days} days (UTC), today included. `, el("a", { href: `#/usage?days=${other}`, id: "usage-range" }, `Show ${other} days`)),
      el("h2", {}, "Tokens by day"),
      legend(),
      el("div", { class: "chart" }, barChart(totals)),
      el("h2", {}, "By model"),
      rows.length ? table(columns, rows, { id: "usage-table" }) : el("p", { class: "muted", id: "usage-empty" }, "Nothing used in this period."),
    );
  }

  window.Tuneplane.pages.usage = (view, gen, where) => usagePage(view, gen, where);
})();
