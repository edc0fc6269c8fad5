// Tuneplane dashboard: metric series from a job's points, and line charts of
// them drawn as SVG (no chart library).
"use strict";

(() => {
  const { el, svg } = window.Tuneplane.dom;

  // Colours of a search's trials (a plain job uses the CSS train/eval colours).
  const PALETTE = ["#2f6fed", "#e8590c", "#12b76a", "#9e77ed", "#f04438", "#0ba5ec", "#f79009", "#667085"];

  // Series of one number by step from the job's metric points: `pick` gives a point's
  // value (or undefined); one series per kind ("train", "eval") and trial. A trial keeps
  // its colour across charts: colours follow the sorted trial ids of all the points.
  function metricSeries(points, pick) {
    const trials = [...new Set(points.map((p) => p.trial_id || "").filter(Boolean))].sort();
    const byKey = new Map();
    for (const p of points) {
      const value = pick(p);
      if (typeof value !== "number" || !Number.isFinite(value)) continue;
      const trial = p.trial_id || "";
      const key = `${trial}\u0000${p.kind}`;
      if (!byKey.has(key)) {
        const color = trial ? PALETTE[trials.indexOf(trial) % PALETTE.length] : null;
        byKey.set(key, { trial, kind: p.kind, color, points: [] });
      }
      byKey.get(key).points.push({ step: p.step, value });
    }
    for (const series of byKey.values()) series.points.sort((p, q) => p.step - q.step);
    return [...byKey.values()];
  }

  // Training and validation loss, one pair per trial for a search.
  const lossSeries = (points) => metricSeries(points, (p) => (p.kind === "eval" ? p.metrics.eval_loss : p.metrics.train_loss));
  // One metric reported as train_<name> by steps and eval_<name> by validation passes.
  const pairSeries = (points, name) => metricSeries(points, (p) => p.metrics[`${p.kind}_${name}`]);
  // Accuracy (classification), 0..1: validation passes, and training steps that report it.
  const accuracySeries = (points) => pairSeries(points, "accuracy");
  // DPO: how often the model prefers the preferred answer (a tie counts half), 0..1, and
  // by how much (the reward margin).
  const rewardAccuracySeries = (points) => pairSeries(points, "reward_accuracy");
  const rewardMarginSeries = (points) => pairSeries(points, "reward_margin");
  // The learning rate each training step used (the schedule's warm-up and decay).
  const learningRateSeries = (points) => metricSeries(points, (p) => (p.kind === "train" ? p.metrics.learning_rate : undefined));
  const LEARNING_RATE_NAMES = { train: "learning rate" };
  // The metrics the charts above draw; the others a job reports are drawn one at a time.
  const CHARTED = new Set(["train_loss", "eval_loss", "learning_rate", "total_steps"]);
  for (const name of ["accuracy", "reward_accuracy", "reward_margin"]) CHARTED.add(`train_${name}`).add(`eval_${name}`);
  // The other metrics the points carry, by name.
  const otherMetrics = (points) => [...new Set(points.flatMap((p) => Object.keys(p.metrics)))].filter((k) => !CHARTED.has(k)).sort();
  // One named metric, by step.
  const namedSeries = (points, name) => metricSeries(points, (p) => p.metrics[name]);
  const LOSS_NAMES = { train: "training loss", eval: "validation loss" };
  const ACCURACY_NAMES = { train: "training accuracy", eval: "validation accuracy" };
  const REWARD_ACCURACY_NAMES = { train: "training reward accuracy", eval: "validation reward accuracy" };
  const REWARD_MARGIN_NAMES = { train: "training reward margin", eval: "validation reward margin" };

  // A trial's colour is an SVG attribute, which CSS would override: trials opt out of it.
  function seriesClass(series) {
    return series.trial ? `series-${series.kind} trial` : `series-${series.kind}`;
  }

  function swatch(series) {
    const icon = svg("svg", { width: 18, height: 8, "aria-hidden": "true" });
    const line = svg("line", { x1: 0, x2: 18, y1: 4, y2: 4, "stroke-width": 3, class: seriesClass(series) });
    if (series.color) line.setAttribute("stroke", series.color);
    if (series.kind === "eval" && series.trial) line.setAttribute("stroke-dasharray", "4 2");
    icon.append(line);
    return icon;
  }

  function legend(seriesList, names) {
    const box = el("div", { class: "legend" });
    for (const s of seriesList) {
      const what = names[s.kind];
      box.append(el("span", { class: s.kind }, swatch(s), s.trial ? `${s.trial} ${what}` : what));
    }
    return box;
  }

  // A number against the step, drawn as SVG (no chart library). `opts`: id, what (the
  // aria label), names (kind -> what a series shows), height, digits (of the y ticks) or
  // format (value, precise) -> text for ticks (and, precise, for a point's title),
  // range ([min, max] of y, fixed; else fitted to the points) and steps (points whose
  // steps the x axis spans too, to line charts of one job up).
  function lineChart(seriesList, opts) {
    const W = 860;
    const H = opts.height || 300;
    const m = { left: 56, right: 16, top: 14, bottom: 34 };
    const count = (kind) => seriesList.filter((s) => s.kind === kind).reduce((n, s) => n + s.points.length, 0);
    const root = svg("svg", {
      viewBox: `0 0 ${W} ${H}`,
      role: "img",
      "aria-label": `${opts.what} by step`,
      id: opts.id,
      "data-train-points": count("train"),
      "data-eval-points": count("eval"),
    });
    const all = seriesList.flatMap((s) => s.points);
    if (all.length === 0) {
      root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "tick" }, `No ${opts.what} reported yet`));
      return root;
    }
    const steps = [...all, ...(opts.steps || [])].map((p) => p.step);
    let x0 = Math.min(...steps);
    let x1 = Math.max(...steps);
    if (x1 === x0) x1 = x0 + 1;
    let y0;
    let y1;
    if (opts.range) {
      [y0, y1] = opts.range;
    } else {
      y0 = Math.min(...all.map((p) => p.value));
      y1 = Math.max(...all.map((p) => p.value));
      const pad = (y1 - y0) * 0.08 || Math.abs(y0) * 0.1 || 1;
      y0 -= pad;
      y1 += pad;
    }
    const sx = (x) => m.left + ((x - x0) / (x1 - x0)) * (W - m.left - m.right);
    const sy = (y) => H - m.bottom - ((y - y0) / (y1 - y0)) * (H - m.top - m.bottom);
    for (let i = 0; i <= 4; i += 1) {
      const y = y0 + ((y1 - y0) * i) / 4;
      root.append(svg("line", { x1: m.left, x2: W - m.right, y1: sy(y), y2: sy(y), class: "grid" }));
      const label = opts.format ? opts.format(y) : y.toFixed(opts.digits ?? 3);
      root.append(svg("text", { x: m.left - 6, y: sy(y) + 4, "text-anchor": "end", class: "tick" }, label));
    }
    // Steps are whole numbers: at most about 8 whole ticks, never a repeated label.
    const every = Math.max(1, Math.ceil((x1 - x0) / 8));
    for (let x = Math.ceil(x0); x <= x1; x += every) {
      root.append(svg("text", { x: sx(x), y: H - m.bottom + 16, "text-anchor": "middle", class: "tick" }, x));
    }
    root.append(svg("line", { x1: m.left, x2: m.left, y1: m.top, y2: H - m.bottom, class: "axis" }));
    root.append(svg("line", { x1: m.left, x2: W - m.right, y1: H - m.bottom, y2: H - m.bottom, class: "axis" }));
    root.append(svg("text", { x: (W + m.left) / 2, y: H - 4, "text-anchor": "middle", class: "tick" }, "step"));
    for (const s of seriesList) {
      const line = svg("polyline", { class: seriesClass(s), points: s.points.map((p) => `${sx(p.step)},${sy(p.value)}`).join(" ") });
      if (s.color) line.setAttribute("stroke", s.color);
      if (s.kind === "eval" && s.trial) line.setAttribute("stroke-dasharray", "4 2");
      if (s.trial) line.setAttribute("data-trial", s.trial);
      root.append(line);
      // Markers for every point when there are few; long runs are a line.
      if (s.points.length > 300) continue;
      for (const p of s.points) {
        const dot = svg("circle", { class: s.trial ? `${s.kind} trial` : s.kind, cx: sx(p.step), cy: sy(p.value), r: 3 });
        if (s.color) dot.setAttribute("fill", s.color);
        const label = s.trial ? `${s.trial} ` : "";
        const value = opts.format ? opts.format(p.value, true) : p.value.toFixed(4);
        dot.append(svg("title", {}, `step ${p.step}: ${label}${opts.names[s.kind]} ${value}`));
        root.append(dot);
      }
    }
    return root;
  }

  // A titled chart with its legend, or nothing: `opts.shown` (a chart the job should have)
  // or points to draw. `steps`: the loss chart's points, so the x axes line up.
  function chartSection(title, seriesList, opts) {
    if (!seriesList.length && !opts.shown) return [];
    return [
      el("h2", {}, title),
      legend(seriesList, opts.names),
      el("div", { class: "chart" }, lineChart(seriesList, { height: 200, digits: 2, ...opts })),
    ];
  }

  window.Tuneplane.charts = {
    lossSeries,
    accuracySeries,
    rewardAccuracySeries,
    rewardMarginSeries,
    learningRateSeries,
    otherMetrics,
    namedSeries,
    LOSS_NAMES,
    ACCURACY_NAMES,
    REWARD_ACCURACY_NAMES,
    REWARD_MARGIN_NAMES,
    LEARNING_RATE_NAMES,
    legend,
    lineChart,
    chartSection,
  };
})();
