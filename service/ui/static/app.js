// Tuneplane dashboard: a small single-page app over the JSON API. No build step, no
// dependencies. Everything tenant-supplied is rendered as text nodes (never innerHTML).
"use strict";

(() => {
  const KEY = "tuneplane.apiKey";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const SVG_NS = "http://www.w3.org/2000/svg";
  let timer = null; // the current page's refresh timer
  let generation = 0; // bumps on every navigation; stale async work checks it

  // -- DOM helpers --------------------------------------------------------------------

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

  // -- API ----------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options = {}) {
    const key = sessionStorage.getItem(KEY);
    const response = await fetch(path, {
      ...options,
      headers: { ...(options.headers || {}), Authorization: `Bearer ${key}` },
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401) {
      signOut("The API key was refused; sign in again.");
      throw new ApiError(401, "unauthorized");
    }
    if (!response.ok) {
      const message = (body && body.error && body.error.message) || response.statusText;
      throw new ApiError(response.status, message);
    }
    return body;
  }

  // The job's metric points after `lastId` (oldest first), every page of them.
  async function newMetrics(jobId, lastId) {
    const out = [];
    let after = lastId;
    for (;;) {
      const params = new URLSearchParams({ limit: "1000" });
      if (after) params.set("after", after);
      const page = await api(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/metrics?${params}`);
      out.push(...page.data);
      if (!page.has_more || page.data.length === 0) break;
      after = page.data[page.data.length - 1].id;
    }
    return out;
  }

  // -- sign-in and routing ------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    stopTimer();
    $("nav").hidden = true;
    $("view").hidden = true;
    $("view").replaceChildren();
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
  }

  async function signIn(event) {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY, key);
    try {
      await api("/v1/fine_tuning/jobs?limit=1");
    } catch (error) {
      if (error.status !== 401) signOut(`Could not sign in: ${error.message}`);
      return;
    }
    $("api-key").value = "";
    $("signin-error").textContent = "";
    if (!location.hash || location.hash === "#/") location.hash = "#/jobs";
    else route();
  }

  function stopTimer() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  // Calls `fn` every `ms` while this page is shown, until it returns false.
  function every(ms, fn, gen) {
    const tick = async () => {
      if (gen !== generation) return;
      let again = true;
      try {
        again = (await fn()) !== false;
      } catch (error) {
        if (error.status === 401) return;
      }
      if (again && gen === generation) timer = setTimeout(tick, ms);
    };
    timer = setTimeout(tick, ms);
  }

  function route() {
    stopTimer();
    generation += 1;
    if (!sessionStorage.getItem(KEY)) {
      signOut("");
      return;
    }
    $("signin").hidden = true;
    $("nav").hidden = false;
    $("view").hidden = false;
    const parts = (location.hash || "#/jobs").replace(/^#\/?/, "").split("/");
    const page = parts[0] || "jobs";
    for (const link of document.querySelectorAll("nav a")) {
      link.classList.toggle("active", link.dataset.page === page);
    }
    const view = $("view");
    view.replaceChildren(el("p", { class: "muted" }, "Loading…"));
    const gen = generation;
    let render;
    if (page === "jobs" && parts[1]) render = jobPage(view, decodeURIComponent(parts[1]), gen);
    else if (page === "models") render = modelsPage(view, gen);
    else if (page === "deployments") render = deploymentsPage(view, gen);
    else render = jobsPage(view, gen);
    render.catch((error) => {
      if (gen === generation && error.status !== 401) {
        view.replaceChildren(el("p", { class: "error" }, `Error: ${error.message}`));
      }
    });
  }

  // -- pages --------------------------------------------------------------------------

  async function jobsPage(view, gen) {
    const load = async () => {
      const page = await api("/v1/fine_tuning/jobs?limit=100");
      if (gen !== generation) return;
      const rows = page.data.map((j) => [
        jobLink(j.id),
        badge(j.state || j.status),
        j.model,
        j.fine_tuned_model,
        when(j.created_at),
        when(j.finished_at),
      ]);
      view.replaceChildren(
        el("h1", {}, "Fine-tuning jobs"),
        page.data.length
          ? table(["Job", "Status", "Base model", "Fine-tuned model", "Created", "Finished"], rows, { id: "jobs-table" })
          : el("p", { class: "muted" }, "No jobs yet."),
        ...(page.has_more ? [el("p", { class: "muted" }, "Showing the newest 100 jobs.")] : []),
      );
    };
    await load();
    every(5000, load, gen);
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

  // A job's metadata as a key/value list (text nodes: keys and values are the user's).
  function metadataList(metadata) {
    const pairs = Object.entries(metadata || {});
    if (!pairs.length) return undefined;
    return el("dl", { class: "fields", id: "job-metadata" }, pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  // When a running job should finish (the service's estimate), and how long until then.
  function estimatedFinish(ts) {
    if (typeof ts !== "number") return undefined;
    const left = Math.max(0, Math.round(ts - Date.now() / 1000));
    const h = Math.floor(left / 3600);
    const m = Math.floor((left % 3600) / 60);
    const s = left % 60;
    const inText = h ? `${h}h ${String(m).padStart(2, "0")}m` : m ? `${m}m ${String(s).padStart(2, "0")}s` : `${s}s`;
    return el("span", { id: "job-eta" }, `${when(ts)} (in ${inText})`);
  }

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
  // Validation accuracy (classification), 0..1.
  const accuracySeries = (points) => metricSeries(points, (p) => (p.kind === "eval" ? p.metrics.eval_accuracy : undefined));
  const LOSS_NAMES = { train: "training loss", eval: "validation loss" };
  const ACCURACY_NAMES = { eval: "validation accuracy" };

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
  // aria label), names (kind -> what a series shows), height, digits (of the y ticks),
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
      root.append(svg("text", { x: m.left - 6, y: sy(y) + 4, "text-anchor": "end", class: "tick" }, y.toFixed(opts.digits ?? 3)));
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
        dot.append(svg("title", {}, `step ${p.step}: ${label}${opts.names[s.kind]} ${p.value.toFixed(4)}`));
        root.append(dot);
      }
    }
    return root;
  }

  // The job's validation metrics: the finished run's own (the job's result, else the
  // metrics its `succeeded` event carries), else the last validation pass so far (not for
  // a search, whose trials each have theirs: see its best trial).
  function validationSummary(job, events, points) {
    const result = job.result && typeof job.result === "object" ? job.result : null;
    const succeeded = events.find((e) => e.data && e.data.status === "succeeded" && e.data.metrics);
    const finals = [result && result.metrics, job.metrics, result, succeeded && succeeded.data.metrics];
    for (const m of finals) {
      if (m && typeof m.eval_loss === "number") return { loss: m.eval_loss, accuracy: m.eval_accuracy, step: null };
    }
    if (job.search) return null;
    let last = null;
    for (const p of points) {
      if (p.kind === "eval" && !p.trial_id && typeof p.metrics.eval_loss === "number" && (!last || p.step >= last.step)) last = p;
    }
    return last && { loss: last.metrics.eval_loss, accuracy: last.metrics.eval_accuracy, step: last.step };
  }

  function validationFields(summary) {
    if (!summary) return [];
    const at = summary.step === null ? "" : ` (step ${summary.step})`;
    const rows = [["Validation loss", `${summary.loss.toFixed(4)}${at}`]];
    if (typeof summary.accuracy === "number") rows.push(["Validation accuracy", `${summary.accuracy.toFixed(4)}${at}`]);
    return rows;
  }

  // A CPU job (use_gpu false) uses no GPUs: its GPU fields (gpus_per_worker) are not shown.
  function shownResources(resources) {
    const shown = { ...(resources || {}) };
    if (!shown.use_gpu) {
      for (const name of Object.keys(shown)) if (name !== "use_gpu" && /gpu/i.test(name)) delete shown[name];
    }
    return shown;
  }

  async function jobPage(view, jobId, gen) {
    const path = `/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
    const points = [];
    let lastId = null;
    const chartBox = el("div", { class: "chart" });
    const legendBox = el("div");
    const accuracyBox = el("div", { id: "accuracy" });
    const header = el("div");
    const details = el("div");
    const trialsBox = el("div");
    const eventsBox = el("div");
    view.replaceChildren(
      el("p", {}, el("a", { href: "#/jobs" }, "← All jobs")),
      header,
      details,
      el("h2", {}, "Loss"),
      legendBox,
      chartBox,
      accuracyBox,
      trialsBox,
      el("h2", {}, "Events"),
      eventsBox,
    );

    const refresh = async () => {
      const job = await api(path);
      const fresh = await newMetrics(jobId, lastId);
      const events = await api(`${path}/events?limit=100`);
      if (gen !== generation) return false;
      if (fresh.length) {
        points.push(...fresh);
        lastId = fresh[fresh.length - 1].id;
      }
      const done = TERMINAL.has(job.status);
      header.replaceChildren(
        el(
          "div",
          { class: "toolbar" },
          el("h1", {}, job.id),
          badge(job.state || job.status),
          el("span", { class: "grow" }),
          // `state` names a pause or cancel under way, which `status` shows as running.
          job.state === "running"
            ? el("button", { type: "button", id: "pause-job", onclick: () => act(job.id, "pause") }, "Pause")
            : null,
          job.state === "paused"
            ? el("button", { type: "button", id: "resume-job", onclick: () => act(job.id, "resume") }, "Resume")
            : null,
          done
            ? null
            : el("button", { type: "button", class: "danger", id: "cancel-job", onclick: () => act(job.id, "cancel") }, "Cancel job"),
        ),
      );
      const hp = job.hyperparameters || {};
      details.replaceChildren(
        fields([
          ["Status", badge(job.state || job.status)],
          ["Estimated finish", estimatedFinish(job.estimated_finish)],
          ["Base model", job.model],
          ["Fine-tuned model", job.fine_tuned_model],
          ["Training file", job.training_file],
          ["Validation file", job.validation_file],
          ["Hyperparameters", json(hp)],
          ["Adapter", json(job.adapter)],
          ["Resources", json(shownResources(job.resources))],
          ["Trained tokens", job.trained_tokens],
          ...validationFields(validationSummary(job, events.data, points)),
          ["Created", when(job.created_at)],
          ["Finished", when(job.finished_at)],
          ["Best trial", job.search_result ? json(job.search_result) : undefined],
          ["Metadata", metadataList(job.metadata)],
          ["Error", job.error ? job.error.message : undefined],
        ]),
      );
      const series = lossSeries(points);
      legendBox.replaceChildren(legend(series, LOSS_NAMES));
      chartBox.replaceChildren(lineChart(series, { id: "loss-chart", what: "loss", names: LOSS_NAMES }));
      // Validation accuracy: classification jobs with validation data (or any reporting it).
      const accuracy = accuracySeries(points);
      const classifies = job.task === "sequence_classification" && job.validation_file;
      accuracyBox.replaceChildren(
        ...(accuracy.length || classifies
          ? [
              el("h2", {}, "Validation accuracy"),
              legend(accuracy, ACCURACY_NAMES),
              el(
                "div",
                { class: "chart" },
                lineChart(accuracy, {
                  id: "accuracy-chart",
                  what: "validation accuracy",
                  names: ACCURACY_NAMES,
                  height: 200,
                  digits: 2,
                  range: [0, 1],
                  steps: series.flatMap((s) => s.points),
                }),
              ),
            ]
          : []),
      );
      if (job.search) {
        const trials = await api(`${path}/trials`);
        if (gen !== generation) return false;
        const rows = trials.data.map((t) => [t.trial_id, badge(t.status), json(t.params), t.best_metric === null ? "-" : Number(t.best_metric).toFixed(4), t.iterations]);
        trialsBox.replaceChildren(
          el("h2", {}, "Trials"),
          table(["Trial", "Status", "Params", `Best ${job.search.metric || "metric"}`, "Iterations"], rows, { id: "trials-table" }),
        );
      }
      eventsBox.replaceChildren(
        table(
          ["Time", "Level", "Message"],
          events.data.map((e) => [when(e.created_at), el("td", { class: `level-${String(e.level).replace(/[^a-z]/g, "")}` }, e.level), e.message]),
          { id: "events-table" },
        ),
        ...(events.has_more ? [el("p", { class: "muted" }, "The newest 100 events; `tuneplane jobs events` lists them all.")] : []),
      );
      return done;
    };

    const act = async (id, action) => {
      try {
        await api(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/${action}`, { method: "POST" });
      } catch (error) {
        window.alert(`${action[0].toUpperCase()}${action.slice(1)} failed: ${error.message}`);
      }
      await refresh();
    };

    const finished = await refresh();
    if (!finished) {
      // Live until the job ends: a last refresh then shows the outcome.
      every(2000, async () => !(await refresh()), gen);
    }
  }

  async function modelsPage(view, gen) {
    const page = await api("/v1/models");
    if (gen !== generation) return;
    const rows = page.data.map((mdl) => [
      mdl.id,
      mdl.owned_by,
      mdl.task,
      mdl.base_model,
      mdl.fine_tuning_job ? jobLink(mdl.fine_tuning_job) : "-",
      when(mdl.created),
    ]);
    view.replaceChildren(
      el("h1", {}, "Models"),
      table(["Model", "Owned by", "Task", "Base model", "Job", "Created"], rows, { id: "models-table" }),
    );
  }

  async function deploymentsPage(view, gen) {
    const load = async () => {
      let page;
      try {
        page = await api("/v1/deployments?limit=100");
      } catch (error) {
        if (error.status === 404) {
          view.replaceChildren(el("h1", {}, "Deployments"), el("p", { class: "muted" }, "This server does not offer deployments."));
          return;
        }
        throw error;
      }
      if (gen !== generation) return;
      const rows = page.data.map((d) => [d.id, d.model, badge(d.status), d.min_replicas, d.max_replicas, d.target_ongoing_requests, when(d.updated_at)]);
      view.replaceChildren(
        el("h1", {}, "Deployments"),
        page.data.length
          ? table(["Deployment", "Model", "Status", "Min", "Max", "Target", "Updated"], rows, { id: "deployments-table" })
          : el("p", { class: "muted" }, "No deployments yet."),
      );
    };
    await load();
    every(5000, load, gen);
  }

  // -- start --------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", () => signOut(""));
    window.addEventListener("hashchange", route);
    route();
  });
})();
