// Tuneplane dashboard, 3 of 5: the signed-in session. The tab's API key, the JSON API
// called with it (a refused key signs out), and the shown page's lifetime: its refresh
// timer, and a generation that stale async work checks.
"use strict";

(() => {
  const { $ } = window.Tuneplane.dom;
  const KEY = "tuneplane.apiKey";
  let timer = null; // the current page's refresh timer
  let generation = 0; // bumps on every navigation; stale async work checks it

  // An API error as the OpenAI error shape gives it: the field it names is `param`.
  class ApiError extends Error {
    constructor(status, message, param, code) {
      super(message);
      this.status = status;
      this.param = param || null;
      this.code = code || null;
    }
  }

  function authorized(headers) {
    return { ...(headers || {}), Authorization: `Bearer ${sessionStorage.getItem(KEY)}` };
  }

  async function api(path, options = {}) {
    const response = await fetch(path, { ...options, headers: authorized(options.headers) });
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
      const error = (body && body.error) || {};
      throw new ApiError(response.status, error.message || response.statusText, error.param, error.code);
    }
    return body;
  }

  // A JSON body sent with `method` (POST unless given).
  function send(path, body, method) {
    return api(path, { method: method || "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
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

  function signOut(message) {
    sessionStorage.removeItem(KEY);
    stopTimer();
    $("nav").hidden = true;
    $("view").hidden = true;
    $("view").replaceChildren();
    $("signin").hidden = false;
    $("signin-error").textContent = message || "";
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

  // A new page is shown: the old one's timer stops and its async work goes stale.
  function newPage() {
    stopTimer();
    generation += 1;
    return generation;
  }

  // Whether the page of generation `gen` is still the one shown.
  const current = (gen) => gen === generation;

  window.Tuneplane.session = { KEY, ApiError, authorized, api, send, newMetrics, signOut, every, newPage, current };
})();
