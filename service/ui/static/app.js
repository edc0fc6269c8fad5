// Tuneplane dashboard: sign-in, routing, and the list pages (jobs, models, deployments)
// and a model's page; a job's page is job.js's, the others' their own scripts'. This
// script loads last and starts the app.
"use strict";

(() => {
  const { el, ago, badge, table, shortId, breakable, jobLink, modelLink, fields, $ } = window.Tuneplane.dom;
  const { KEY, api, signOut, newPage, every, current } = window.Tuneplane.session;
  const { jobPage, deployControl } = window.Tuneplane.job;
  const pages = window.Tuneplane.pages;

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

  // "#/page/arg?query": the page's name, its one argument (an id) and its query.
  function parseHash(hash) {
    const [path, search] = (hash || "").replace(/^#\/?/, "").split("?");
    const parts = path.split("/");
    return {
      page: parts[0] || "jobs",
      arg: parts[1] ? decodeURIComponent(parts[1]) : null,
      query: new URLSearchParams(search || ""),
    };
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
    const where = parseHash(location.hash);
    for (const link of document.querySelectorAll("nav a")) {
      link.classList.toggle("active", link.dataset.page === where.page);
    }
    const view = $("view");
    view.replaceChildren(el("p", { class: "muted" }, "Loading…"));
    const show = pages[where.page] || pages.jobs;
    show(view, gen, where).catch((error) => {
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
        breakable(j.model),
        j.fine_tuned_model ? modelLink(j.fine_tuned_model) : "-",
        ago(j.created_at),
        ago(j.finished_at),
      ]);
      // A phone shows the job, its status and its age; its page has the rest.
      const columns = [
        "Job",
        "Status",
        { label: "Model", cls: "opt" },
        { label: "Fine-tuned model", cls: "opt" },
        "Created",
        { label: "Finished", cls: "opt" },
      ];
      view.replaceChildren(
        el("div", { class: "toolbar" }, el("h1", {}, "Fine-tuning jobs"), el("span", { class: "grow" }), newJobLink()),
        page.data.length ? table(columns, rows, { id: "jobs-table" }) : el("p", { class: "muted" }, "No jobs yet."),
        ...(page.has_more ? [el("p", { class: "muted" }, "Showing the newest 100 jobs.")] : []),
      );
    };
    await load();
    every(5000, load, gen);
  }

  // A link to the create-job form, starting from `model` when given.
  function newJobLink(model) {
    const href = model ? `#/new-job?${new URLSearchParams({ model })}` : "#/new-job";
    return el("a", { href, class: "button", id: "new-job" }, "New job");
  }

  const playgroundLink = (model) => el("a", { href: `#/playground?${new URLSearchParams({ model })}` }, "Try");

  async function modelsPage(view, gen) {
    const page = await api("/v1/models");
    if (!current(gen)) return;
    const rows = page.data.map((mdl) => [
      modelLink(mdl.id),
      el("span", { class: "nowrap" }, mdl.task),
      mdl.base_model ? breakable(mdl.base_model) : "-",
      mdl.parent ? modelLink(mdl.parent) : "-",
      mdl.fine_tuning_job ? jobLink(mdl.fine_tuning_job) : "-",
      mdl.owned_by,
      ago(mdl.created),
      mdl.task === "sequence_classification" && !mdl.fine_tuning_job ? "-" : playgroundLink(mdl.id),
    ]);
    const columns = [
      "Model",
      { label: "Task", cls: "opt" },
      { label: "Base model", cls: "opt" },
      { label: "Parent", cls: "opt" },
      { label: "Job", cls: "opt" },
      { label: "Owned by", cls: "opt" },
      { label: "Created", cls: "opt" },
      "",
    ];
    view.replaceChildren(el("h1", {}, "Models"), table(columns, rows, { id: "models-table" }));
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
    const fineTuned = Boolean(mdl.fine_tuning_job);
    view.replaceChildren(
      el("p", {}, el("a", { href: "#/models" }, "← All models")),
      el("h1", { class: "name" }, breakable(mdl.id)),
      el(
        "div",
        { class: "toolbar" },
        mdl.task === "sequence_classification" && !fineTuned ? null : el("a", { href: `#/playground?${new URLSearchParams({ model: mdl.id })}`, class: "button" }, "Playground"),
        newJobLink(mdl.id),
        ...(fineTuned ? deployControl(mdl.id, { class: "secondary", id: "deploy-model" }, { id: "deploy-result" }) : []),
      ),
      fields([
        ["Owned by", mdl.owned_by],
        ["Task", mdl.task],
        ["What it is for", mdl.description || undefined],
        ["Base model", mdl.base_model ? breakable(mdl.base_model) : undefined],
        ["Adapter", mdl.adapter || undefined],
        ["Parent", mdl.parent ? modelLink(mdl.parent) : fineTuned ? "-" : undefined],
        ["Lineage", lineageList(mdl)],
        ["Job", fineTuned ? jobLink(mdl.fine_tuning_job) : undefined],
        ["Created", ago(mdl.created)],
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
      const rows = page.data.map((d) => [
        shortId(d.id),
        modelLink(d.model),
        badge(d.status),
        d.min_replicas,
        d.max_replicas,
        d.target_ongoing_requests,
        ago(d.updated_at),
      ]);
      const columns = [
        { label: "Deployment", cls: "opt" },
        "Model",
        "Status",
        { label: "Min", cls: "opt" },
        { label: "Max", cls: "opt" },
        { label: "Target", cls: "opt" },
        { label: "Updated", cls: "opt" },
      ];
      view.replaceChildren(
        el("h1", {}, "Deployments"),
        page.data.length ? table(columns, rows, { id: "deployments-table" }) : el("p", { class: "muted" }, "No deployments yet."),
      );
    };
    await load();
    every(5000, load, gen);
  }

  pages.jobs = (view, gen, where) => (where.arg ? jobPage(view, where.arg, gen) : jobsPage(view, gen));
  pages.models = (view, gen, where) => (where.arg ? modelPage(view, where.arg, gen) : modelsPage(view, gen));
  pages.deployments = (view, gen) => deploymentsPage(view, gen);

  // -- start --------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("signin-form").addEventListener("submit", signIn);
    $("signout").addEventListener("click", () => signOut(""));
    window.addEventListener("hashchange", route);
    route();
  });
})();
