// The dashboard's live parts: the widget table, the commands sent from this page, the event log and the import's
// progress, all kept from the JSON reads and the event stream. Forms are sent by htmx through the `json-command`
// extension below. Plain browser JavaScript: no build step.
"use strict";

(() => {
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const csrfHeader = document.querySelector('meta[name="csrf-header"]').content;
  const EVENT_TYPES = [
    "widget.created", "widget.updated", "widget.deleted",
    "command.failed", "command.progress", "command.completed", "stream.reset",
  ];
  const MAX_EVENTS_SHOWN = 200;
  const MAX_COMMANDS_SHOWN = 50;
  const MAX_OUTCOMES_KEPT = 2000;
  const PAGE = 500;

  const $ = (selector, root = document) => root.querySelector(selector);
  const clone = (id) => $(`#${id}`).content.firstElementChild.cloneNode(true);
  const field = (root, name) => $(`[data-field="${name}"]`, root);
  const shortId = (id) => String(id).slice(-8);
  const price = (cents) => (cents / 100).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const pad = (n) => String(n).padStart(2, "0");
  const clock = (iso) => { const t = new Date(iso); return `${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}`; };
  const stamp = (iso) => { const t = new Date(iso); return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} ${clock(iso)}`; };

  function flash(element) {
    element.classList.remove("flash");
    void element.offsetWidth; // restarts the animation on a row changed twice in a row
    element.classList.add("flash");
  }

  // Only for what has no place of its own on the page (a command's outcome is in the commands list).
  function toast(text) {
    const note = document.createElement("div");
    note.className = "toast";
    note.textContent = text;
    $("#toasts").append(note);
    setTimeout(() => note.remove(), 4000);
  }

  // A problem (RFC 9457) as a sentence a person reads: its detail, then each invalid field and why.
  function problemText(status, body) {
    let problem = null;
    try { problem = JSON.parse(body); } catch { /* not JSON: a proxy's page, say */ }
    if (status === 401) return "Your session has ended (signed out, expired or its key revoked): reload to sign in again.";
    if (!problem || typeof problem !== "object") return `The request failed (HTTP ${status}).`;
    const lines = [problem.detail || problem.title || `HTTP ${status}`];
    for (const param of problem.invalid_params || []) lines.push(`${param.name}: ${param.reason}`);
    return lines.join("\n");
  }

  // ---- the widget table -------------------------------------------------------------------------------------
  const table = {
    body: $("#widgets tbody"),
    rows: new Map(), // sku -> {tr, version}
    order: [], // skus, sorted, for inserting a row in its place
    total: 0,
    touched: null, // skus changed by events while a page of the list is loading

    upsert(widget) {
      if (this.touched) this.touched.add(widget.sku);
      let entry = this.rows.get(widget.sku);
      if (entry && entry.version >= widget.version) return;
      if (!entry) {
        entry = { tr: clone("widget-row"), version: 0 };
        entry.tr.dataset.sku = widget.sku;
        field(entry.tr, "sku").textContent = widget.sku;
        this.insert(widget.sku, entry.tr);
        this.rows.set(widget.sku, entry);
        this.total += 1;
      }
      entry.version = widget.version;
      entry.widget = widget;
      field(entry.tr, "name").textContent = widget.name;
      field(entry.tr, "price").textContent = price(widget.price_cents);
      field(entry.tr, "price").title = `${widget.price_cents} cents`;
      field(entry.tr, "version").textContent = widget.version;
      field(entry.tr, "updated").textContent = stamp(widget.updated_at);
      flash(entry.tr);
      this.counted();
    },

    remove(sku) {
      if (this.touched) this.touched.add(sku);
      const entry = this.rows.get(sku);
      if (!entry) return;
      entry.tr.remove();
      this.rows.delete(sku);
      this.order.splice(this.position(sku), 1);
      this.total -= 1;
      this.counted();
    },

    position(sku) {
      let low = 0, high = this.order.length;
      while (low < high) {
        const mid = (low + high) >> 1;
        if (this.order[mid] < sku) low = mid + 1; else high = mid;
      }
      return low;
    },

    insert(sku, tr) {
      const at = this.position(sku);
      const next = this.order[at];
      this.order.splice(at, 0, sku);
      this.body.insertBefore(tr, next === undefined ? null : this.rows.get(next).tr);
    },

    counted() {
      const shown = this.rows.size;
      $("#widget-count").textContent = shown === this.total ? `${shown} widgets` : `${shown} of ${this.total} shown`;
      $("#widgets-empty").hidden = shown > 0;
    },

    async load() {
      this.touched = new Set();
      try {
        const response = await fetch(`/ui/widgets?limit=${PAGE}&order_by=sku`, { headers: { Accept: "application/json" } });
        if (!response.ok) throw new Error(problemText(response.status, await response.text()));
        const page = await response.json();
        for (const widget of page.items) if (!this.touched.has(widget.sku)) this.upsert(widget);
        this.total = Math.max(page.total, this.rows.size);
        this.counted();
      } catch (error) {
        toast(`Could not load the widgets: ${error.message}`);
      } finally {
        this.touched = null;
      }
    },

    reset() {
      this.body.replaceChildren();
      this.rows.clear();
      this.order = [];
      this.total = 0;
      return this.load();
    },
  };

  // ---- commands sent from this page -------------------------------------------------------------------------
  // What an event says of its command's status. An import's rows change widgets under the import's own id, so for
  // an import only `command.completed` (or `command.failed`) ends it.
  function statusAfter(event, command) {
    if (event.type === "command.completed") return event.data.status;
    if (event.type === "command.failed") return "failed";
    if (event.type === "command.progress" || command.type === "import_widgets") return "running";
    return "succeeded";
  }
  const commands = {
    list: $("#commands"),
    items: new Map(), // command id -> {li, command}
    outcomes: new Map(), // command id -> the newest event about it, for a 202 that arrives after its event
    listeners: [],

    track(command) {
      const li = clone("command-item");
      const what = command.type === "import_widgets" ? "import" : `${command.type.replace("_widget", "")} ${command.sku}`;
      field(li, "what").textContent = what;
      field(li, "id").textContent = shortId(command.id);
      field(li, "id").title = command.id;
      li.dataset.commandId = command.id;
      this.items.set(command.id, { li, command: { ...command } });
      this.list.prepend(li);
      while (this.list.children.length > MAX_COMMANDS_SHOWN) {
        const last = this.list.lastElementChild;
        this.items.delete(last.dataset.commandId);
        last.remove();
      }
      $("#commands-empty").hidden = true;
      const seen = this.outcomes.get(command.id);
      if (seen) this.apply(seen); else this.render(command.id);
    },

    apply(event) {
      const item = this.items.get(event.command_id);
      if (!item) {
        this.outcomes.set(event.command_id, event);
        if (this.outcomes.size > MAX_OUTCOMES_KEPT) this.outcomes.delete(this.outcomes.keys().next().value);
        return;
      }
      const command = item.command;
      const status = statusAfter(event, command);
      // Progress events may trail the end of the import on a slow stream: never step back from a finished status.
      if (!["succeeded", "failed"].includes(command.status) || status !== "running") command.status = status;
      if (event.data.progress) command.progress = event.data.progress;
      if (event.data.result) command.result = event.data.result;
      if (event.data.error) command.error = event.data.error;
      this.render(event.command_id);
    },

    render(id) {
      const { li, command } = this.items.get(id);
      const pill = field(li, "status");
      pill.textContent = command.status;
      pill.className = `pill pill-${command.status}`;
      li.dataset.status = command.status;
      let detail = "";
      if (command.error) detail = command.error.detail || command.error.title;
      else if (command.result) detail = importSummary(command.result);
      else if (command.progress) detail = `${command.progress.done} of ${command.progress.total} rows`;
      field(li, "detail").textContent = detail;
      for (const listener of this.listeners) listener(command);
    },
  };

  function importSummary(result) {
    const parts = [`${result.total} rows`, `${result.created} created`, `${result.updated} updated`];
    if (result.unchanged) parts.push(`${result.unchanged} unchanged`);
    parts.push(`${result.failed} failed`);
    return parts.join(", ");
  }

  // ---- the import's progress --------------------------------------------------------------------------------
  const importPanel = {
    watching: null,

    watch(command) {
      this.watching = command.id;
      $("#import-status").hidden = false;
      $("#import-result").replaceChildren();
    },

    update(command) {
      if (command.id !== this.watching) return;
      const finished = command.status === "succeeded" || command.status === "failed";
      const progress = command.progress || { done: 0, total: 0 };
      const percent = finished ? 100 : progress.total ? Math.floor((100 * progress.done) / progress.total) : 0;
      const bar = $("#import-progress");
      bar.setAttribute("aria-valuenow", String(percent));
      bar.dataset.status = command.status;
      $(".bar", bar).style.width = `${percent}%`;
      $("#import-progress-text").textContent = finished
        ? `${command.status === "succeeded" ? "Done" : "Failed"}: 100%`
        : `${progress.done.toLocaleString()} of ${progress.total.toLocaleString()} rows · ${percent}%`;
      if (finished) this.finish(command);
    },

    finish(command) {
      const result = $("#import-result");
      result.replaceChildren();
      const summary = document.createElement("p");
      summary.className = "result-summary";
      summary.textContent = command.result ? importSummary(command.result) : (command.error?.detail || command.status);
      result.append(summary);
      const errors = command.result?.errors || [];
      if (errors.length) {
        const list = document.createElement("ul");
        list.className = "row-errors";
        for (const error of errors) {
          const item = document.createElement("li");
          item.textContent = `row ${error.row}${error.sku ? ` (${error.sku})` : ""}: ${error.reason}`;
          list.append(item);
        }
        result.append(list);
      }
    },
  };
  commands.listeners.push((command) => importPanel.update(command));

  // ---- the event log ----------------------------------------------------------------------------------------
  function logEvent(event) {
    const li = clone("event-item");
    li.dataset.type = event.type;
    field(li, "time").textContent = clock(event.occurred_at);
    field(li, "type").textContent = event.type;
    field(li, "type").className = `badge badge-${event.type.split(".")[1]}`;
    field(li, "sku").textContent = event.sku ? `${event.sku}${event.version ? ` v${event.version}` : ""}` : "";
    const data = event.data || {};
    let summary = "";
    if (event.type === "widget.created" || event.type === "widget.updated") summary = `${data.name} · ${price(data.price_cents)}`;
    else if (data.error) summary = data.error.detail || data.error.title;
    else if (data.progress) summary = `${data.progress.done}/${data.progress.total}`;
    field(li, "summary").textContent = [summary, `command ${shortId(event.command_id)}`].filter(Boolean).join(" · ");
    const log = $("#events");
    log.prepend(li);
    while (log.children.length > MAX_EVENTS_SHOWN) log.lastElementChild.remove();
  }

  // ---- the event stream: EventSource resumes by Last-Event-ID on its own after a drop ------------------------
  function connect() {
    const status = $("#stream-status");
    const show = (text, kind) => { status.textContent = text; status.className = `pill pill-${kind}`; };
    const source = new EventSource("/ui/events");
    let loaded = false;
    source.addEventListener("open", () => {
      show("live", "live");
      if (!loaded) { loaded = true; table.load(); }
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) show("disconnected: reload to sign in", "failed");
      else show("reconnecting", "running");
    });
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => {
        if (type === "stream.reset") { table.reset(); return; }
        const event = JSON.parse(message.data);
        logEvent(event);
        if (type === "widget.created" || type === "widget.updated") table.upsert(event.data);
        else if (type === "widget.deleted") table.remove(event.sku);
        commands.apply(event);
      });
    }
  }

  // ---- forms: htmx sends them as the API's JSON (numbers as numbers) or a CSV file ---------------------------
  htmx.defineExtension("json-command", {
    onEvent(name, evt) {
      if (name !== "htmx:configRequest") return true;
      const form = evt.detail.elt.closest("form");
      const file = $('input[type="file"]', form)?.files[0];
      if (evt.detail.verb !== "delete") evt.detail.headers["Content-Type"] = file ? "text/csv" : "application/json";
      if (form.dataset.sku) {
        evt.detail.path = evt.detail.path.replace("{sku}", encodeURIComponent(form.dataset.sku));
        evt.detail.headers["If-Match"] = `"${form.dataset.version}"`;
      }
      return true;
    },
    encodeParameters(xhr, parameters, elt) {
      const form = elt.closest("form");
      const file = $('input[type="file"]', form)?.files[0];
      if (file) return file;
      const body = {};
      for (const [name, value] of parameters.entries()) {
        if (value === "") continue; // an optional field left empty: absent, not ""
        body[name] = $(`[name="${name}"]`, form).type === "number" ? Number(value) : value;
      }
      return JSON.stringify(body);
    },
  });

  document.body.addEventListener("htmx:configRequest", (evt) => {
    evt.detail.headers[csrfHeader] = csrfToken;
  });

  document.body.addEventListener("htmx:afterRequest", (evt) => {
    const form = evt.detail.elt.closest("form[hx-ext~='json-command']");
    if (!form) return;
    const xhr = evt.detail.xhr;
    const problem = $(".problem", form);
    if (xhr.status === 200 || xhr.status === 202) {
      problem.hidden = true;
      const command = JSON.parse(xhr.responseText);
      commands.track(command);
      if (command.type === "import_widgets") importPanel.watch(command);
      importPanel.update(commands.items.get(command.id).command);
      if (form.dataset.reset) form.reset();
      form.closest("dialog")?.close();
    } else {
      problem.textContent = problemText(xhr.status, xhr.responseText);
      problem.hidden = false;
    }
  });

  // ---- the edit dialog --------------------------------------------------------------------------------------
  const dialog = $("#edit-dialog");
  const editForm = $("#edit-form");
  table.body.addEventListener("click", (evt) => {
    const button = evt.target.closest("[data-edit]");
    if (!button) return;
    const { widget } = table.rows.get(button.closest("tr").dataset.sku);
    editForm.reset();
    editForm.dataset.sku = widget.sku;
    editForm.dataset.version = widget.version;
    $("#edit-sku").textContent = widget.sku;
    $("#edit-version").textContent = widget.version;
    editForm.elements.name.value = widget.name;
    editForm.elements.price_cents.value = widget.price_cents;
    $(".problem", editForm).hidden = true;
    dialog.showModal();
  });
  $("[data-close]", dialog).addEventListener("click", () => dialog.close());

  table.counted();
  connect();
})();
