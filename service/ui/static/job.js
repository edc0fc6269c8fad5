// Tuneplane dashboard, 4 of 5: a fine-tuning job's page (details, charts, trials,
// events, and its pause/resume/cancel buttons), live until the job ends.
"use strict";

(() => {
  const { el, when, badge, table, modelLink, fields, json } = window.Tuneplane.dom;
  const {
    lossSeries,
    accuracySeries,
    rewardAccuracySeries,
    rewardMarginSeries,
    LOSS_NAMES,
    ACCURACY_NAMES,
    REWARD_ACCURACY_NAMES,
    REWARD_MARGIN_NAMES,
    legend,
    lineChart,
    chartSection,
  } = window.Tuneplane.charts;
  const { api, newMetrics, every, current } = window.Tuneplane.session;
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
    return el("span", { id: "job-eta" }, `${when(ts)} (in ${inText})`);
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
          ["Base model", isFineTuned(job.model) ? (parent ? parent.base_model : undefined) : job.model],
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
      if (job.search) {
        const trials = await api(`${path}/trials`);
        if (!current(gen)) return false;
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

  // "Continues" on a job's page: the model it started from, and whether it is still there.
  function continuesText(model, parent) {
    return el("span", { id: "job-continues" }, modelLink(model), parent === null ? " (no longer available)" : null);
  }

  window.Tuneplane.job = { jobPage };
})();
