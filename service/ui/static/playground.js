// Tuneplane dashboard: the playground. One model, or two side by side (a fine-tune and its
// base by default), answer the same message: a text model's answer streamed from
// /v1/chat/completions, a classifier's label scores from /v1/classifications.
"use strict";

(() => {
  const { el, table, breakable, showFieldError } = window.Tuneplane.dom;
  const { ApiError, api, authorized, signOut, current } = window.Tuneplane.session;
  const TEXT = "causal_lm";
  const CLASSIFIER = "sequence_classification";

  const kindOf = (model) => (model.task === CLASSIFIER ? "a classifier" : "a text model");

  // What the playground can call: a base encoder has no classification head of its own
  // until it is fine-tuned on labels, so only fine-tuned classifiers are offered.
  const callable = (model) => model.task === TEXT || (model.task === CLASSIFIER && Boolean(model.base_model));

  const seconds = (ms) => `${(ms / 1000).toFixed(2)} s`;

  function options(models) {
    const option = (m) => el("option", { value: m.id }, `${m.id} (${m.task === CLASSIFIER ? "classifier" : "text"})`);
    const tuned = models.filter((m) => m.base_model);
    const base = models.filter((m) => !m.base_model);
    return [
      tuned.length ? el("optgroup", { label: "Fine-tuned" }, tuned.map(option)) : null,
      base.length ? el("optgroup", { label: "Base models" }, base.map(option)) : null,
    ];
  }

  // The models the page opens with: the query's, else the newest fine-tune; compared with
  // the query's `compare` ("" or absent from the list: none), else a fine-tune's base.
  function initialChoice(models, query, notes) {
    const byId = new Map(models.map((m) => [m.id, m]));
    const asked = query.get("model");
    const newest = models.filter((m) => m.base_model).sort((x, y) => y.created - x.created)[0];
    const model = byId.get(asked) || newest || models[0];
    if (asked && !byId.has(asked)) notes.push(`There is no model '${asked}' to try here; showing ${model.id}.`);
    let compare = null;
    if (query.has("compare")) {
      const wanted = query.get("compare");
      compare = byId.get(wanted) || null;
      if (wanted && wanted !== "none" && !compare) notes.push(`There is no model '${wanted}' to compare with here.`);
    } else if (model.base_model) {
      compare = byId.get(model.base_model) || null;
    }
    return { model, compare: compare && compare.id !== model.id ? compare : null };
  }

  // A field: its label, its control, a hint and the place for its error (`param`).
  function field(label, control, param, hint) {
    return el(
      "div",
      { class: "field" },
      el("label", { for: control.id }, label),
      control,
      hint ? el("p", { class: "hint" }, hint) : null,
      param ? el("p", { class: "field-error", "data-param": param, role: "alert" }) : null,
    );
  }

  // A column of answers, headed by its model's id.
  function column(side, model) {
    const waiting = model.task === CLASSIFIER ? "The scores show here." : "The answer shows here.";
    return el(
      "section",
      { id: `pg-answer-${side}`, class: "card pg-column", "data-model": model.id, "data-state": "idle" },
      el("h2", {}, breakable(model.id)),
      el("p", { class: "muted pg-stats", id: `pg-stats-${side}` }, waiting),
    );
  }

  function showError(col, side, error) {
    col.dataset.state = "error";
    col.replaceChildren(col.firstChild, el("p", { class: "error", id: `pg-error-${side}`, role: "alert" }, error.message || String(error)));
  }

  // A non-2xx response as an ApiError, with the service's message when it sent one.
  async function responseError(response) {
    let error = {};
    try {
      error = ((await response.json()) || {}).error || {};
    } catch (_) {
      error = {};
    }
    if (response.status === 401) signOut("The API key was refused; sign in again.");
    return new ApiError(response.status, error.message || `${response.status} ${response.statusText}`, error.param, error.code);
  }

  // A server-sent event stream from a fetch's body: `onData` gets each event's data (its
  // `data:` lines joined); comments (": ...") and other fields are skipped. Stops reading,
  // and aborts the request, once the page is no longer shown; returns whether it read it all.
  async function readEvents(response, onData, gen, controller) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let data = [];
    const line = (text) => {
      if (text === "") {
        if (data.length) onData(data.join("\n"));
        data = [];
      } else if (text.startsWith("data:")) {
        data.push(text.slice(5).replace(/^ /, ""));
      }
    };
    for (;;) {
      const { value, done } = await reader.read();
      if (!current(gen)) {
        controller.abort();
        return false;
      }
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      lines.forEach(line);
    }
    line(buffer + decoder.decode());
    line("");
    return true;
  }

  // Streams `model`'s answer to `messages` into its column as the pieces arrive, then
  // shows the usage (which the stream's last chunk carries) and the time taken.
  async function streamAnswer(col, side, model, request, gen, controller) {
    const text = el("div", { class: "pg-text scroll", id: `pg-text-${side}` });
    const stats = el("p", { class: "muted pg-stats", id: `pg-stats-${side}` }, "Waiting for the model…");
    col.replaceChildren(col.firstChild, text, stats);
    col.dataset.state = "running";
    const started = performance.now();
    let first = null;
    let usage = null;
    let finish = null;
    let finished = false;
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: authorized({ "Content-Type": "application/json" }),
      body: JSON.stringify({ ...request, model: model.id, stream: true, stream_options: { include_usage: true } }),
      signal: controller.signal,
    });
    if (!current(gen)) {
      controller.abort();
      return;
    }
    if (!response.ok) throw await responseError(response);
    const onData = (data) => {
      if (data === "[DONE]") {
        finished = true;
        return;
      }
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error.message || "The model failed.");
      if (chunk.usage) usage = chunk.usage;
      const choice = (chunk.choices || [])[0];
      if (!choice) return;
      finish = choice.finish_reason || finish;
      const piece = choice.delta && choice.delta.content;
      if (piece) {
        if (first === null) first = performance.now();
        text.append(piece);
        stats.textContent = "Answering…";
      }
    };
    if (!(await readEvents(response, onData, gen, controller))) return;
    if (!finished) throw new ApiError(502, "The answer broke off before its end.");
    const parts = [];
    if (usage) parts.push(`${usage.completion_tokens} tokens (prompt ${usage.prompt_tokens})`);
    parts.push(`in ${seconds(performance.now() - started)}`);
    if (first !== null) parts.push(`first after ${seconds(first - started)}`);
    if (finish === "length") parts.push("cut at max tokens");
    if (!text.textContent) text.append(el("span", { class: "muted" }, "(an empty answer)"));
    stats.textContent = parts.join(" · ");
    col.dataset.state = "done";
  }

  // `model`'s label scores for `input`, highest first, the top label in bold.
  async function classify(col, side, model, input, gen, controller) {
    col.replaceChildren(col.firstChild, el("p", { class: "muted pg-stats", id: `pg-stats-${side}` }, "Classifying…"));
    col.dataset.state = "running";
    const started = performance.now();
    const result = await api("/v1/classifications", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: model.id, input }),
      signal: controller.signal,
    });
    if (!current(gen)) return;
    const answer = result.data[0];
    const scores = Object.entries(answer.scores || { [answer.label]: answer.score }).sort((x, y) => y[1] - x[1]);
    const rows = scores.map(([label, score], i) => [
      i === 0 ? el("strong", {}, label) : label,
      el("td", { class: "nowrap", "data-score": String(score) }, score.toFixed(4)),
    ]);
    const scoresTable = table(["Label", "Score"], rows, { id: `pg-scores-${side}` });
    scoresTable.querySelector("tbody tr").classList.add("top");
    const tokens = result.usage ? `${result.usage.prompt_tokens} tokens · ` : "";
    const stats = el("p", { class: "muted pg-stats", id: `pg-stats-${side}` }, `${tokens}in ${seconds(performance.now() - started)}`);
    col.replaceChildren(col.firstChild, scoresTable, stats);
    col.dataset.state = "done";
  }

  // The models to offer: the list, and a checkpoint the link names (checkpoints are models
  // by name, not in the list).
  async function offered(query) {
    const list = await api("/v1/models");
    const named = [query.get("model"), query.get("compare")].filter((id) => id && id !== "none");
    for (const id of named) {
      if (list.data.some((m) => m.id === id)) continue;
      try {
        list.data.push(await api(`/v1/models/${encodeURIComponent(id)}`));
      } catch (error) {
        if (error.status !== 404) throw error; // a missing one: initialChoice says so
      }
    }
    return list;
  }

  async function playgroundPage(view, gen, where) {
    const list = await offered(where.query);
    if (!current(gen)) return;
    const models = list.data.filter(callable);
    const byId = new Map(models.map((m) => [m.id, m]));
    if (!models.length) {
      view.replaceChildren(el("h1", {}, "Playground"), el("p", { class: "muted" }, "No model to try yet."));
      return;
    }
    const leftOut = list.data.filter((m) => !callable(m) && m.task === CLASSIFIER).map((m) => m.id);
    const notes = [];
    const choice = initialChoice(models, where.query, notes);

    const modelSelect = el("select", { id: "pg-model", name: "model" }, options(models));
    const compareSelect = el("select", { id: "pg-compare", name: "compare" }, el("option", { value: "" }, "none"), options(models));
    modelSelect.value = choice.model.id;
    compareSelect.value = choice.compare ? choice.compare.id : "";
    const system = el("textarea", { id: "pg-system", name: "system", rows: 2, placeholder: "You answer briefly." });
    const message = el("textarea", { id: "pg-message", name: "message", rows: 4, required: true });
    const maxTokens = el("input", { id: "pg-max-tokens", name: "max_tokens", type: "number", min: 1, max: 4096, step: 1, value: 64 });
    const temperature = el("input", {
      id: "pg-temperature",
      name: "temperature",
      type: "number",
      min: 0,
      max: 2,
      step: 0.1,
      value: 0,
      title: "0: the most likely token each time, the same answer every time",
    });
    const sendButton = el("button", { id: "pg-send", type: "submit" }, "Send");
    const stopButton = el("button", { id: "pg-stop", type: "button", class: "secondary", hidden: true }, "Stop");
    const note = el("p", { id: "pg-note", role: "status" });
    const formError = el("p", { class: "error", role: "alert" });
    const systemField = field("System prompt (optional)", system);
    const messageField = field("Message", message, "input", "Ctrl+Enter sends.");
    const sampling = el(
      "div",
      { class: "toolbar" },
      field("Max tokens", maxTokens, "max_tokens"),
      field("Temperature", temperature, "temperature"),
    );
    const form = el(
      "form",
      { id: "pg-form", class: "card", novalidate: true },
      el(
        "div",
        { class: "toolbar pg-models" },
        field("Model", modelSelect),
        field("Compare with", compareSelect),
      ),
      leftOut.length
        ? el("p", { class: "hint muted" }, `Base classifiers (${leftOut.join(", ")}) are not listed: they classify once fine-tuned on your labels.`)
        : null,
      note,
      systemField,
      messageField,
      sampling,
      el("div", { class: "toolbar" }, sendButton, stopButton),
      formError,
    );
    const answers = el("div", { id: "pg-answers", class: "pg-columns" });
    view.replaceChildren(el("h1", {}, "Playground"), form, answers);

    let running = []; // the AbortControllers of the requests in flight

    const chosen = () => [byId.get(modelSelect.value), byId.get(compareSelect.value)].filter(Boolean);
    const mismatched = () => {
      const [a, b] = chosen();
      return Boolean(b) && b.task !== a.task;
    };
    const columns = (picked) => picked.map((m, i) => column("ab"[i], m));

    // The selection's columns, its fields (a classifier takes a text, no sampling), and
    // whether it can be sent: two models of different kinds answer different requests.
    function update() {
      const [a, b] = chosen();
      const classifier = a.task === CLASSIFIER;
      systemField.hidden = classifier;
      sampling.hidden = classifier;
      messageField.querySelector("label").textContent = classifier ? "Text to classify" : "Message";
      const lines = [...notes];
      if (mismatched()) lines.push(`${a.id} is ${kindOf(a)} and ${b.id} is ${kindOf(b)}: they cannot answer the same request. Pick two of the same kind.`);
      note.textContent = lines.join(" ");
      note.className = lines.length ? "error" : "";
      note.hidden = !lines.length;
      sendButton.disabled = mismatched() || running.length > 0;
      answers.replaceChildren(...columns(chosen()));
    }

    // The URL says what is chosen (to share or reload it) without a new navigation.
    function remember() {
      const query = new URLSearchParams({ model: modelSelect.value, compare: compareSelect.value });
      history.replaceState(null, "", `#/playground?${query}`);
    }

    function stop() {
      for (const controller of running) controller.abort();
    }

    // The sampling settings, or null (each problem shown at its field).
    function settings() {
      const max = maxTokens.valueAsNumber;
      const temp = temperature.valueAsNumber;
      if (!Number.isInteger(max) || max < 1 || max > 4096) {
        showFieldError(form, formError, { param: "max_tokens", message: "A whole number from 1 to 4096." });
        return null;
      }
      if (!Number.isFinite(temp) || temp < 0 || temp > 2) {
        showFieldError(form, formError, { param: "temperature", message: "A number from 0 to 2." });
        return null;
      }
      return { max_tokens: max, temperature: temp };
    }

    async function sendAll(event) {
      event.preventDefault();
      if (sendButton.disabled) return;
      showFieldError(form, formError, { param: null, message: "" });
      const picked = chosen();
      if (mismatched()) return;
      const input = message.value;
      if (!input.trim()) {
        showFieldError(form, formError, { param: "input", message: picked[0].task === CLASSIFIER ? "Type a text to classify." : "Type a message." });
        return;
      }
      let request = null;
      if (picked[0].task === TEXT) {
        const sampled = settings();
        if (!sampled) return;
        const messages = system.value.trim() ? [{ role: "system", content: system.value }] : [];
        request = { ...sampled, messages: [...messages, { role: "user", content: input }] };
      }
      answers.replaceChildren(...columns(picked));
      running = picked.map(() => new AbortController());
      sendButton.disabled = true;
      stopButton.hidden = false;
      // Both at once: each column fills as its own answer arrives.
      await Promise.all(
        picked.map(async (model, i) => {
          const side = "ab"[i];
          const col = answers.querySelector(`#pg-answer-${side}`);
          try {
            if (request) await streamAnswer(col, side, model, request, gen, running[i]);
            else await classify(col, side, model, input, gen, running[i]);
          } catch (error) {
            running[i].abort(); // a stream that failed part way is not read further
            if (!current(gen)) return;
            if (error.name === "AbortError") {
              col.dataset.state = "stopped";
              col.append(el("p", { class: "muted" }, "Stopped."));
            } else {
              showError(col, side, error);
            }
          }
        }),
      );
      if (!current(gen)) return;
      running = [];
      stopButton.hidden = true;
      sendButton.disabled = mismatched();
    }

    const changed = () => {
      stop();
      remember();
      update();
    };
    modelSelect.addEventListener("change", changed);
    compareSelect.addEventListener("change", changed);
    stopButton.addEventListener("click", stop);
    form.addEventListener("submit", sendAll);
    message.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) form.requestSubmit();
    });
    // Leaving the page ends its streams (each also checks the page as its pieces arrive).
    window.addEventListener("hashchange", stop, { once: true });
    update();
  }

  window.Tuneplane.pages.playground = playgroundPage;
})();
