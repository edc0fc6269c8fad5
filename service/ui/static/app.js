// Tuneplane dashboard, 5 of 5: sign-in, routing, and the list pages (jobs, models,
// deployments) and a model's page; a job's page is job.js's. This script starts the app.
"use strict";

(() => {
  const { el, when, badge, table, jobLink, modelLink, fields, $ } = window.Tuneplane.dom;
  const { KEY, api, signOut, newPage, every, current } = window.Tuneplane.session;
  const { jobPage } = window.Tuneplane.job;

  // -- sign-in and routing ------------------------------------------------------------

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

  function route() {
    const gen = newPage();
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
    let render;
    if (page === "jobs" && parts[1]) render = jobPage(view, decodeURIComponent(parts[1]), gen);
    else if (page === "models" && parts[1]) render = modelPage(view, decodeURIComponent(parts[1]), gen);
    else if (page === "models") render = modelsPage(view, gen);
    else if (page === "deployments") render = deploymentsPage(view, gen);
    else render = jobsPage(view, gen);
    render.catch((error) => {
      if (current(gen) && error.status !== 401) {
        view.replaceChildren(el("p", { class: "error" }, `Error: ${error.message}`));
      }
    });
  }

  // -- pages --------------------------------------------------------------------------

  async function jobsPage(view, gen) {
    const load = async () => {
      const page = await api("/v1/fine_tuning/jobs?limit=100");
      if (!current(gen)) return;
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
          ? table(["Job", "Status", "Model", "Fine-tuned model", "Created", "Finished"], rows, { id: "jobs-table" })
          : el("p", { class: "muted" }, "No jobs yet."),
        ...(page.has_more ? [el("p", { class: "muted" }, "Showing the newest 100 jobs.")] : []),
      );
    };
    await load();
    every(5000, load, gen);
  }

  async function modelsPage(view, gen) {
    const page = await api("/v1/models");
    if (!current(gen)) return;
    const rows = page.data.map((mdl) => [
      modelLink(mdl.id),
      mdl.owned_by,
      mdl.task,
      mdl.base_model,
      mdl.parent ? modelLink(mdl.parent) : "-",
      mdl.fine_tuning_job ? jobLink(mdl.fine_tuning_job) : "-",
      when(mdl.created),
    ]);
    view.replaceChildren(
      el("h1", {}, "Models"),
      table(["Model", "Owned by", "Task", "Base model", "Parent", "Job", "Created"], rows, { id: "models-table" }),
    );
  }

  // The chain a model descends from (base model first, its parent last), then the model.
  function lineageList(model) {
    if (!Array.isArray(model.lineage)) return undefined;
    return el(
      "ol",
      { class: "lineage", id: "model-lineage" },
      model.lineage.map((id) => el("li", {}, modelLink(id))),
      el("li", {}, el("strong", {}, model.id)),
    );
  }

  async function modelPage(view, modelId, gen) {
    const mdl = await api(`/v1/models/${encodeURIComponent(modelId)}`);
    if (!current(gen)) return;
    view.replaceChildren(
      el("p", {}, el("a", { href: "#/models" }, "← All models")),
      el("h1", {}, mdl.id),
      fields([
        ["Owned by", mdl.owned_by],
        ["Task", mdl.task],
        ["What it is for", mdl.description || undefined],
        ["Base model", mdl.base_model || undefined],
        ["Adapter", mdl.adapter || undefined],
        ["Parent", mdl.parent ? modelLink(mdl.parent) : mdl.fine_tuning_job ? "-" : undefined],
        ["Lineage", lineageList(mdl)],
        ["Job", mdl.fine_tuning_job ? jobLink(mdl.fine_tuning_job) : undefined],
        ["Created", when(mdl.created)],
      ]),
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
      if (!current(gen)) return;
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
