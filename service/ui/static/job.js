// Tuneplane dashboard: a fine-tuning job's page (details, charts, checkpoints, trials,
// events, and its pause/resume/cancel buttons), live until the job ends.
"use strict";

(() => {
  const { el, when, ago, badge, table, shortId, copyButton, breakable, kvList, modelLink, fields } = window.Tuneplane.dom;
  const {
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
  } = window.Tuneplane.charts;
  const { api, send, newMetrics, every, current } = window.Tuneplane.session;
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

  // Fine-tuned models and their checkpoints: a job given one continues its weights.
  const isFineTuned = (model) => typeof model === "string" && model.startsWith("ft:");

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
    return el("span", { id: "job-eta", title: when(ts) }, `in ${inText}`);
  }

  // A job's method as a person reads it: its type, and DPO's beta.
  function methodText(method) {
    const type = (method && method.type) || "supervised";
    const hp = (method && method[type] && method[type].hyperparameters) || {};
    return type === "dpo" && hp.beta !== undefined ? `dpo (beta ${hp.beta})` : type;
  }

  // The job's validation metrics: the finished run's own (the job's result, else the
  // metrics its `succeeded` event carries), else the last validation pass so far (not for
  // a search, whose trials each have theirs: see its best trial).
  function validationSummary(job, events, points) {
    const result = job.result && typeof job.result === "object" ? job.result : null;
    const succeeded = events.find((e) => e.data && e.data.status === "succeeded" && e.data.metrics);
    const finals = [result && result.metrics, job.metrics, result, succeeded && succeeded.data.metrics];
    for (const m of finals) {
      if (m && typeof m.eval_loss === "number") return { metrics: m, step: null };
    }
    if (job.search) return null;
    let last = null;
    for (const p of points) {
      if (p.kind === "eval" && !p.trial_id && typeof p.metrics.eval_loss === "number" && (!last || p.step >= last.step)) last = p;
    }
    return last && { metrics: last.metrics, step: last.step };
  }

  // The validation metrics the details show, in order, with their labels.
  const VALIDATION_FIELDS = [
    ["eval_loss", "Validation loss"],
    ["eval_accuracy", "Validation accuracy"],
    ["eval_reward_accuracy", "Validation reward accuracy"],
    ["eval_reward_margin", "Validation reward margin"],
  ];

  function validationFields(summary) {
    if (!summary) return [];
    const at = summary.step === null ? "" : ` (step ${summary.step})`;
    return VALIDATION_FIELDS.filter(([key]) => typeof summary.metrics[key] === "number").map(([key, label]) => [
      label,
      `${summary.metrics[key].toFixed(4)}${at}`,
    ]);
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
    const rewardAccuracyBox = el("div", { id: "reward-accuracy" });
    const rewardMarginBox = el("div", { id: "reward-margin" });
    const learningRateBox = el("div", { id: "learning-rate" });
    const moreBox = el("div", { id: "more-metrics" });
    const checkpointsBox = el("div", { id: "checkpoints" });
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
      rewardAccuracyBox,
      rewardMarginBox,
      learningRateBox,
      moreBox,
      checkpointsBox,
      trialsBox,
      el("h2", {}, "Events"),
      eventsBox,
    );

    // The fine-tuned model the job continues, looked up once: null when it is gone (a
    // deleted model, a checkpoint removed by retention); another error tries again later.
    let parent;
    const lookUpParent = async (job) => {
      if (!isFineTuned(job.model) || parent !== undefined) return;
      try {
        parent = await api(`/v1/models/${encodeURIComponent(job.model)}`);
      } catch (error) {
        if (error.status === 401) throw error;
        if (error.status === 404) parent = null;
      }
    };

    const refresh = async () => {
      const job = await api(path);
      await lookUpParent(job);
      const fresh = await newMetrics(jobId, lastId);
      const events = await api(`${path}/events?limit=100`);
      const checkpoints = await api(`${path}/checkpoints?limit=100`);
      if (!current(gen)) return false;
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
          copyButton(job.id),
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
          ["Method", el("span", { id: "job-method" }, methodText(job.method))],
          ["Continues", isFineTuned(job.model) ? continuesText(job.model, parent) : undefined],
          ["Base model", isFineTuned(job.model) ? (parent ? breakable(parent.base_model) : undefined) : breakable(job.model)],
          ["Fine-tuned model", job.fine_tuned_model ? modelLink(job.fine_tuned_model) : "-"],
          ["Training file", shortId(job.training_file)],
          ["Validation file", shortId(job.validation_file)],
          ["Hyperparameters", kvList(hp, { id: "job-hyperparameters" })],
          ["Adapter", kvList(job.adapter, { id: "job-adapter" })],
          ["Resources", kvList(shownResources(job.resources), { id: "job-resources" })],
          ["Trained tokens", job.trained_tokens],
          ...validationFields(validationSummary(job, events.data, points)),
          ["Created", ago(job.created_at)],
          ["Finished", ago(job.finished_at)],
          ["Best trial", job.search_result ? kvList(job.search_result, { id: "job-best-trial" }) : undefined],
          ["Metadata", metadataList(job.metadata)],
          ["Error", job.error ? job.error.message : undefined],
        ]),
      );
      const series = lossSeries(points);
      legendBox.replaceChildren(legend(series, LOSS_NAMES));
      chartBox.replaceChildren(lineChart(series, { id: "loss-chart", what: "loss", names: LOSS_NAMES }));
      const steps = series.flatMap((s) => s.points);
      // Accuracy: classification jobs with validation data (or any reporting it).
      const accuracy = accuracySeries(points);
      const classifies = job.task === "sequence_classification" && job.validation_file;
      const trainsAccuracy = accuracy.some((s) => s.kind === "train");
      accuracyBox.replaceChildren(
        ...chartSection(trainsAccuracy ? "Accuracy" : "Validation accuracy", accuracy, {
          shown: classifies,
          id: "accuracy-chart",
          what: trainsAccuracy ? "accuracy" : "validation accuracy",
          names: ACCURACY_NAMES,
          range: [0, 1],
          steps,
        }),
      );
      // DPO: reward accuracy and margin, training and validation.
      const dpo = (job.method && job.method.type) === "dpo";
      rewardAccuracyBox.replaceChildren(
        ...chartSection("Reward accuracy", rewardAccuracySeries(points), {
          shown: dpo,
          id: "reward-accuracy-chart",
          what: "reward accuracy",
          names: REWARD_ACCURACY_NAMES,
          range: [0, 1],
          steps,
        }),
      );
      rewardMarginBox.replaceChildren(
        ...chartSection("Reward margin", rewardMarginSeries(points), {
          shown: dpo,
          id: "reward-margin-chart",
          what: "reward margin",
          names: REWARD_MARGIN_NAMES,
          digits: 3,
          steps,
        }),
      );
      learningRateBox.replaceChildren(
        ...chartSection("Learning rate", learningRateSeries(points), {
          id: "learning-rate-chart",
          what: "learning rate",
          names: LEARNING_RATE_NAMES,
          height: 140,
          format: (v, precise) => v.toExponential(precise ? 3 : 1),
          steps,
        }),
      );
      drawMore(steps);
      checkpointsBox.replaceChildren(...checkpointSection(checkpoints.data));
      if (job.search) {
        const trials = await api(`${path}/trials`);
        if (!current(gen)) return false;
        const rows = trials.data.map((t) => [
          el("span", { class: "nowrap" }, t.trial_id),
          badge(t.status),
          kvList(t.params),
          t.best_metric === null ? "-" : Number(t.best_metric).toFixed(4),
          t.iterations,
        ]);
        trialsBox.replaceChildren(
          el("h2", {}, "Trials"),
          table(["Trial", "Status", "Params", `Best ${job.search.metric || "metric"}`, "Iterations"], rows, { id: "trials-table" }),
        );
      }
      eventsBox.replaceChildren(
        table(
          ["Time", "Level", "Message"],
          events.data.map((e) => [ago(e.created_at), el("td", { class: `level-${String(e.level).replace(/[^a-z]/g, "")}` }, e.level), e.message]),
          { id: "events-table" },
        ),
        ...(events.has_more ? [el("p", { class: "muted" }, "The newest 100 events; `tuneplane jobs events` lists them all.")] : []),
      );
      return done;
    };

    // Every other metric the job reports (tokens per second, DPO's chosen and rejected
    // rewards, ...), one at a time. The picker is built once, so a refresh neither closes
    // it nor forgets the pick.
    const picker = el("select", { id: "more-metric", "aria-label": "Metric" });
    const moreChart = el("div", { class: "chart" });
    let shownNames = "";
    let lastSteps = [];
    const drawMore = (steps) => {
      lastSteps = steps;
      const names = otherMetrics(points);
      if (!names.length) return;
      if (names.join() !== shownNames) {
        const picked = picker.value || (names.includes("tokens_per_second") ? "tokens_per_second" : names[0]);
        picker.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
        picker.value = names.includes(picked) ? picked : names[0];
        shownNames = names.join();
      }
      if (!moreBox.firstChild) moreBox.replaceChildren(el("div", { class: "toolbar" }, el("h2", {}, "More metrics"), picker), moreChart);
      const name = picker.value;
      const labels = { train: name, eval: name };
      moreChart.replaceChildren(lineChart(namedSeries(points, name), { id: "more-chart", what: name, names: labels, height: 160, digits: 2, steps }));
    };
    picker.addEventListener("change", () => drawMore(lastSteps));

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

  // A checkpoint's metrics as short key/value pairs (numbers to 4 places).
  function checkpointMetrics(metrics) {
    const shown = {};
    for (const [k, v] of Object.entries(metrics || {})) {
      if (k !== "step" && typeof v === "number") shown[k] = Number.isInteger(v) ? v : v.toFixed(4);
    }
    return kvList(shown);
  }

  // The job's kept checkpoints, newest first: each is a model to try, continue or deploy.
  function checkpointSection(checkpoints) {
    if (!checkpoints.length) return [];
    const rows = checkpoints.map((c) => {
      const model = c.fine_tuned_model_checkpoint;
      return [
        c.step_number,
        modelLink(model),
        checkpointMetrics(c.metrics),
        ago(c.created_at),
        el(
          "span",
          { class: "actions" },
          el("a", { href: `#/playground?${new URLSearchParams({ model })}` }, "Try"),
          el("a", { href: `#/new-job?${new URLSearchParams({ model })}` }, "Continue"),
          ...deployControl(model, { class: "link deploy" }),
        ),
      ];
    });
    const columns = ["Step", "Checkpoint", { label: "Metrics", cls: "opt" }, { label: "Created", cls: "opt" }, ""];
    return [el("h2", {}, "Checkpoints"), table(columns, rows, { id: "checkpoints-table" })];
  }

  // A Deploy button for `model` (a fine-tuned model or a checkpoint) and where its outcome
  // shows: the new deployment, linking to the deployments, or the API's refusal.
  function deployControl(model, buttonAttrs, statusAttrs) {
    const status = el("span", { class: "muted", role: "status", ...(statusAttrs || {}) });
    const deploy = async () => {
      try {
        const d = await send("/v1/deployments", { model });
        status.replaceChildren("Deployment ", el("a", { href: "#/deployments" }, d.id), ` ${d.status}`);
      } catch (error) {
        status.replaceChildren(el("span", { class: "error" }, `Deploy failed: ${error.message}`));
      }
    };
    return [el("button", { type: "button", ...buttonAttrs, onclick: deploy }, "Deploy"), status];
  }

  // "Continues" on a job's page: the model it started from, and whether it is still there.
  function continuesText(model, parent) {
    return el("span", { id: "job-continues" }, modelLink(model), parent === null ? " (no longer available)" : null);
  }

  window.Tuneplane.job = { jobPage, deployControl };
})();
