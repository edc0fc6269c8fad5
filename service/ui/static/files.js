// Tuneplane dashboard: the files page. Upload a JSONL file (dropped on the page or chosen),
// see the validator's verdict, list the tenant's files, start a job on one, delete one.
"use strict";

(() => {
  const { el, ago, table, shortId } = window.Tuneplane.dom;
  const { api, current } = window.Tuneplane.session;

  // A byte count as a person reads it: "512 B", "1.2 KB", "3.4 MB".
  function size(bytes) {
    if (typeof bytes !== "number") return "-";
    if (bytes < 1024) return `${bytes} B`;
    const units = ["KB", "MB", "GB", "TB"];
    let value = bytes / 1024;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${value.toFixed(1)} ${units[unit]}`;
  }

  // "1 example", "8 examples".
  const examples = (n) => `${n} example${n === 1 ? "" : "s"}`;

  async function filesPage(view, gen) {
    const input = el("input", { type: "file", id: "upload-file", accept: ".jsonl,.json,application/jsonl,application/json" });
    const uploadButton = el("button", { type: "submit", id: "upload-button" }, "Upload");
    const status = el("p", { id: "upload-status", class: "muted", role: "status" });
    const uploadError = el("p", { id: "upload-error", class: "error", role: "alert", hidden: true });
    const listError = el("p", { id: "files-error", class: "error", role: "alert", hidden: true });
    const listBox = el("div", { id: "files-list" });
    const drop = el(
      "form",
      { id: "drop-zone", class: "card drop-zone" },
      el("p", {}, "Drop a JSONL file here, or choose one:"),
      el("div", { class: "field" }, el("label", { for: "upload-file" }, "Training or validation data (.jsonl)"), input),
      uploadButton,
      status,
      uploadError,
    );

    const showError = (box, text) => {
      box.textContent = text;
      box.hidden = !text;
    };

    // A list fetched before an upload or delete may arrive after the one fetched after it:
    // only the newest request's answer is drawn.
    let loads = 0;
    const load = async () => {
      const mine = ++loads;
      const page = await api("/v1/files");
      if (!current(gen) || mine !== loads) return;
      const rows = page.data.map((f) => [
        shortId(f.id),
        el("span", { class: "filename" }, f.filename),
        f.format,
        f.examples,
        el("span", { class: "nowrap" }, size(f.bytes)),
        ago(f.created_at),
        el(
          "span",
          { class: "actions" },
          el("a", { href: `#/new-job?${new URLSearchParams({ training_file: f.id })}`, class: "new-job" }, "New job"),
          el("button", { type: "button", class: "danger", onclick: () => remove(f) }, "Delete"),
        ),
      ]);
      // A phone shows the name, the size of the data and what to do with it.
      const columns = [
        { label: "File", cls: "opt" },
        "Name",
        { label: "Format", cls: "opt" },
        "Examples",
        { label: "Size", cls: "opt" },
        { label: "Created", cls: "opt" },
        "",
      ];
      listBox.replaceChildren(
        page.data.length ? table(columns, rows, { id: "files-table" }) : el("p", { class: "muted", id: "files-empty" }, "No files yet."),
      );
    };

    const remove = async (file) => {
      if (!window.confirm(`Delete ${file.filename} (${file.id})?`)) return;
      showError(listError, "");
      try {
        await api(`/v1/files/${encodeURIComponent(file.id)}`, { method: "DELETE" });
      } catch (error) {
        if (error.status === 401 || !current(gen)) return;
        // A file a job still uses (409) stays; the API says which job.
        showError(listError, `Could not delete ${file.filename}: ${error.message}`);
        return;
      }
      if (current(gen)) await load();
    };

    let busy = false;
    const upload = async (file) => {
      if (!file || busy) return;
      busy = true;
      uploadButton.disabled = true;
      showError(uploadError, "");
      status.textContent = `Uploading ${file.name}…`;
      const form = new FormData();
      form.append("file", file, file.name);
      form.append("purpose", "fine-tune");
      try {
        const stored = await api("/v1/files", { method: "POST", body: form });
        if (!current(gen)) return;
        status.textContent = `Uploaded ${stored.filename}: ${stored.format}, ${examples(stored.examples)}.`;
        input.value = "";
        await load();
      } catch (error) {
        if (error.status === 401 || !current(gen)) return;
        status.textContent = "";
        // The validator's message names the line at fault ("line 3: ...").
        showError(uploadError, `${file.name}: ${error.message}`);
      } finally {
        busy = false;
        uploadButton.disabled = false;
      }
    };

    drop.addEventListener("submit", (event) => {
      event.preventDefault();
      if (input.files && input.files.length) upload(input.files[0]);
      else showError(uploadError, "Choose a file to upload first.");
    });
    // Without preventDefault on dragover the browser opens a dropped file instead.
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", (event) => {
      if (!drop.contains(event.relatedTarget)) drop.classList.remove("over"); // not onto a child
    });
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      const files = event.dataTransfer && event.dataTransfer.files;
      if (files && files.length) upload(files[0]);
    });

    view.replaceChildren(
      el(
        "div",
        { class: "toolbar" },
        el("h1", {}, "Files"),
        el("span", { class: "grow" }),
        el("a", { href: "#/new-job", class: "button", id: "files-new-job" }, "New job"),
      ),
      drop,
      el("h2", {}, "Your files"),
      listError,
      listBox,
    );
    await load();
  }

  window.Tuneplane.pages.files = (view, gen) => filesPage(view, gen);
})();
