// Tuneplane dashboard: the new-job form. Every value goes to the API as typed (numbers as
// numbers, blank as "auto"); the API judges it, and its error is shown next to the field
// its `param` names.
"use strict";

(() => {
  const { el, showFieldError } = window.Tuneplane.dom;
  const { api, send, current } = window.Tuneplane.session;

  // The three hyperparameters the form offers: input id, API name, label.
  const HYPERPARAMETERS = [
    ["job-n-epochs", "n_epochs", "Epochs"],
    ["job-batch-size", "batch_size", "Batch size"],
    ["job-lr-multiplier", "learning_rate_multiplier", "Learning rate multiplier"],
  ];

  // Where the API reports a hyperparameter's error: a supervised job's go in the top-level
  // `hyperparameters` (OpenAI's legacy field, and the one the service's own checks name),
  // a DPO job's in method.dpo.hyperparameters.
  const hpParam = (method, name) => (method === "dpo" ? `method.dpo.hyperparameters.${name}` : `hyperparameters.${name}`);

  // A labelled field with the element its API error goes into; `hint`: text, or an element.
  function field(label, id, param, control, hint) {
    return el(
      "div",
      { class: "field" },
      el("label", { for: id }, label),
      control,
      hint instanceof Node ? hint : hint ? el("p", { class: "hint" }, hint) : null,
      el("p", { class: "field-error", "data-param": param, id: `${id}-error`, role: "alert" }),
    );
  }

  // An input left to the API: blank is "auto" (left out), a number is sent as a number,
  // anything else as typed, for the API to refuse by name.
  function typed(value) {
    const text = value.trim();
    if (text === "") return undefined;
    const n = Number(text);
    return /^[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$/i.test(text) && Number.isFinite(n) ? n : text;
  }

  const option = (value, label, selected) => el("option", { value, selected: selected || null }, label);

  const fileLabel = (f) => `${f.filename} (${f.format}, ${f.examples} example${f.examples === 1 ? "" : "s"})`;

  function modelSelect(models, wanted) {
    // A fine-tuned model came out of a job; the rest are the catalog's base models.
    const base = models.filter((m) => !m.fine_tuning_job);
    const tuned = models.filter((m) => m.fine_tuning_job);
    const label = (m) => (m.task ? `${m.id} (${m.task})` : m.id);
    const known = new Set(models.map((m) => m.id));
    const groups = [
      el("optgroup", { label: "Base models" }, base.map((m) => option(m.id, label(m), m.id === wanted))),
    ];
    // A checkpoint ("Continue" on a job's page) is a model the list does not hold.
    const extra = wanted && !known.has(wanted) ? [option(wanted, wanted, true)] : [];
    if (tuned.length || extra.length) {
      groups.push(el("optgroup", { label: "Your fine-tuned models" }, extra, tuned.map((m) => option(m.id, label(m), m.id === wanted))));
    }
    return el("select", { id: "job-model", name: "model" }, option("", "Choose a model…", !wanted), groups);
  }

  function fileSelect(id, files, wanted, none) {
    const known = new Set(files.map((f) => f.id));
    return el(
      "select",
      { id, name: id },
      option("", none || "Choose a file…", !wanted),
      wanted && !known.has(wanted) ? option(wanted, wanted, true) : null,
      files.map((f) => option(f.id, fileLabel(f), f.id === wanted)),
    );
  }

  // One key/value row of the job's metadata.
  function metadataRow() {
    const row = el(
      "div",
      { class: "metadata-row" },
      el("input", { type: "text", class: "metadata-key", placeholder: "key", "aria-label": "Metadata key" }),
      " ",
      el("input", { type: "text", class: "metadata-value", placeholder: "value", "aria-label": "Metadata value" }),
      " ",
      el("button", { type: "button", class: "secondary", onclick: () => row.remove() }, "Remove"),
    );
    return row;
  }

  async function newJobPage(view, gen, where) {
    const [models, files] = await Promise.all([api("/v1/models"), api("/v1/files?purpose=fine-tune")]);
    if (!current(gen)) return;
    const heading = [el("p", {}, el("a", { href: "#/files" }, "← Files")), el("h1", {}, "New fine-tuning job")];
    if (!files.data.length) {
      view.replaceChildren(
        ...heading,
        el("p", { id: "job-no-files" }, "Upload a file first: ", el("a", { href: "#/files" }, "Files"), "."),
      );
      return;
    }
    const query = where.query;
    const fileFormat = new Map(files.data.map((f) => [f.id, f.format]));
    const model = modelSelect(models.data, query.get("model"));
    const training = fileSelect("job-training-file", files.data, query.get("training_file"));
    const validation = fileSelect("job-validation-file", files.data, query.get("validation_file"), "none");
    const method = el("select", { id: "job-method", name: "method" }, option("supervised", "supervised"), option("dpo", "dpo"));
    const beta = el("input", { type: "text", id: "job-beta", inputmode: "decimal", placeholder: "auto", autocomplete: "off" });
    const betaField = field("Beta", "job-beta", "method.dpo.hyperparameters.beta", beta, "How far DPO may move from the starting model; blank: auto (0.1).");
    const hpFields = HYPERPARAMETERS.map(([id, name, label]) => {
      const input = el("input", { type: "text", id, inputmode: "decimal", placeholder: "auto", autocomplete: "off" });
      return { name, input, field: field(label, id, hpParam("supervised", name), input) };
    });
    const suffix = el("input", { type: "text", id: "job-suffix", autocomplete: "off", placeholder: "e.g. support-bot" });
    const rows = el("div", { id: "job-metadata", role: "group", "aria-labelledby": "job-metadata-label" });
    const addRow = el("button", { type: "button", class: "secondary", id: "job-metadata-add", onclick: () => rows.append(metadataRow()) }, "Add");
    const submit = el("button", { type: "submit", id: "job-submit" }, "Create job");
    const general = el("p", { id: "job-form-error", class: "error", role: "alert" });
    const description = el("p", { class: "hint", id: "job-model-description" });

    // DPO has a beta, trains on preference files, and takes its hyperparameters in
    // method.dpo (so the API names them there).
    const methodChanged = () => {
      betaField.hidden = method.value !== "dpo";
      for (const hp of hpFields) hp.field.querySelector(".field-error").dataset.param = hpParam(method.value, hp.name);
    };
    const trainingChanged = () => {
      const format = fileFormat.get(training.value);
      if (format === "preference") method.value = "dpo";
      else if (format) method.value = "supervised";
      methodChanged();
    };
    const modelChanged = () => {
      const chosen = models.data.find((m) => m.id === model.value);
      description.textContent = (chosen && chosen.description) || "";
    };
    method.addEventListener("change", methodChanged);
    training.addEventListener("change", trainingChanged);
    model.addEventListener("change", modelChanged);
    trainingChanged();
    modelChanged();

    const form = el(
      "form",
      { id: "job-form", novalidate: true },
      field("Model", "job-model", "model", model, description),
      field("Training file", "job-training-file", "training_file", training, "A preference file trains with DPO; any other format, supervised."),
      field("Validation file", "job-validation-file", "validation_file", validation),
      field("Method", "job-method", "method.type", method),
      betaField,
      el("h2", {}, "Hyperparameters"),
      el("p", { class: "muted" }, "Blank: auto, chosen from the data and the model."),
      hpFields.map((hp) => hp.field),
      el("h2", {}, "Name and labels"),
      field("Suffix", "job-suffix", "suffix", suffix, "Part of the fine-tuned model's name: letters, digits, '.', '_', '-'."),
      el(
        "div",
        { class: "field" },
        el("label", { id: "job-metadata-label" }, "Metadata"),
        rows,
        addRow,
        el("p", { class: "hint" }, "Key/value pairs kept with the job; jobs can be listed by them."),
        el("p", { class: "field-error", "data-param": "metadata", id: "job-metadata-error", role: "alert" }),
      ),
      general,
      submit,
    );

    const body = () => {
      const out = { model: model.value, training_file: training.value };
      if (validation.value) out.validation_file = validation.value;
      const name = suffix.value.trim();
      if (name) out.suffix = name;
      const metadata = {};
      for (const row of rows.querySelectorAll(".metadata-row")) {
        const key = row.querySelector(".metadata-key").value.trim();
        if (key) metadata[key] = row.querySelector(".metadata-value").value;
      }
      if (Object.keys(metadata).length) out.metadata = metadata;
      const hp = {};
      for (const { name: key, input } of hpFields) {
        const value = typed(input.value);
        if (value !== undefined) hp[key] = value;
      }
      if (method.value === "dpo") {
        const b = typed(beta.value);
        if (b !== undefined) hp.beta = b;
        out.method = { type: "dpo", dpo: Object.keys(hp).length ? { hyperparameters: hp } : {} };
      } else {
        out.method = { type: "supervised" };
        if (Object.keys(hp).length) out.hyperparameters = hp;
      }
      return out;
    };

    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      for (const node of form.querySelectorAll(".field-error")) node.textContent = "";
      general.textContent = "";
      submit.disabled = true;
      submit.textContent = "Creating…";
      try {
        const job = await send("/v1/fine_tuning/jobs", body());
        if (current(gen)) location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
      } catch (error) {
        if (error.status === 401 || !current(gen)) return;
        showFieldError(form, general, shownError(error));
      } finally {
        submit.disabled = false;
        submit.textContent = "Create job";
      }
    });

    view.replaceChildren(...heading, form);
  }

  // The error as the form shows it: one metadata value's error ("metadata.<key>") under
  // the metadata, and the message without the field's name when it goes next to that field.
  function shownError(error) {
    const param = error.param && error.param.startsWith("metadata.") ? "metadata" : error.param;
    let message = error.message || "The request failed.";
    if (param && param === error.param && message.startsWith(`${param}: `)) message = message.slice(param.length + 2);
    return { param, message };
  }

  window.Tuneplane.pages["new-job"] = (view, gen, where) => newJobPage(view, gen, where);
})();
