// The dashboard's live parts: a page of the widget list, the commands sent from this page, the event log and the
// import's progress, all kept from the JSON reads and the event stream. Forms are sent by htmx through the
// `json-command` extension below. Plain browser JavaScript: no build step, nothing inline (the page's policy
// allows only its own files).
//
// A session whose key has the `admin` scope gets a page with a place for widgets' internal notes, and the address of
// the admin reads (`/ui/admin/widgets`); it reads the list from there. Events never carry the notes: a row changed by
// an event keeps the notes last read until the page is read again (at most a second later), and the edit dialog
// reads the widget afresh when it opens. Any other session reads the public list and never asks for the notes.
"use strict";

(() => {
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  const csrfHeader = document.querySelector('meta[name="csrf-header"]').content;
  const adminRead = document.querySelector('meta[name="admin-read"]')?.content;
  const WIDGETS_READ = adminRead || "/ui/widgets";
  const STREAM_RESET = "stream.reset";
  const EVENT_TYPES = [
    "widget.created", "widget.updated", "widget.deleted",
    "command.failed", "command.progress", "command.completed", STREAM_RESET,
  ];
  const MAX_EVENTS_SHOWN = 200;
  const MAX_COMMANDS_SHOWN = 50;
  const MAX_OUTCOMES_KEPT = 2000;
  const PAGE_SIZE = 100;
  const WRITE_WAIT_S = 10; // a write waits this long for its outcome, to show a failure beside its form
  const REFRESH_INTERVAL_MS = 1000; // the list is read again at most this often while events change it
  const SEARCH_DELAY_MS = 250;
  const RETRY_DELAYS_MS = [1000, 2000, 4000, 8000, 15000, 30000];
  const FLASH = [{ backgroundColor: "#fff6c9" }, { backgroundColor: "transparent" }];
  const FLASH_TIMING = { duration: 1600, easing: "ease-out" };

  const $ = (selector, root = document) => root.querySelector(selector);
  const clone = (id) => $(`#${id}`).content.firstElementChild.cloneNode(true);
  const field = (root, name) => $(`[data-field="${name}"]`, root);
  const shortId = (id) => String(id).slice(-8);
  const count = (n) => n.toLocaleString();
  const price = (cents) => (cents / 100).toLocaleString(undefined, { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  const pad = (n) => String(n).padStart(2, "0");
  const clock = (iso) => { const t = new Date(iso); return `${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}`; };
  const stamp = (iso) => { const t = new Date(iso); return `${t.getFullYear()}-${pad(t.getMonth() + 1)}-${pad(t.getDate())} ${clock(iso)}`; };
  const finished = (command) => command.status === "succeeded" || command.status === "failed";

  // Only for what has no place of its own on the page (a command's outcome is beside its form and in the list).
  function toast(text) {
    const note = document.createElement("div");
    note.className = "toast";
    note.textContent = text;
    $("#toasts").append(note);
    setTimeout(() => note.remove(), 4000);
  }

  // A problem (RFC 9457) as a sentence a person reads: its detail, then each invalid field and why.
  function describe(problem, status) {
    if (status === 401) return "Your session has ended (signed out, expired or its key revoked): reload to sign in again.";
    if (!problem || typeof problem !== "object") return `The request failed (HTTP ${status}).`;
    const lines = [problem.detail || problem.title || `HTTP ${status}`];
    for (const param of problem.invalid_params || []) lines.push(`${param.name}: ${param.reason}`);
    return lines.join("\n");
  }
  function parse(text) {
    try { return JSON.parse(text); } catch { return null; } // not JSON: a proxy's page, say
  }

  // Rows come and go by the page; only those on screen are worth animating.
  const onScreen = new WeakSet();
  const flashWhenSeen = new WeakSet();
  const visibility = new IntersectionObserver((entries) => {
    for (const { target, isIntersecting } of entries) {
      if (!isIntersecting) { onScreen.delete(target); continue; }
      onScreen.add(target);
      if (flashWhenSeen.has(target)) { flashWhenSeen.delete(target); target.animate(FLASH, FLASH_TIMING); }
    }
  });
  // The Web Animations API restarts an animation without the forced layout a class toggle needs.
  function flash(element) {
    if (onScreen.has(element) && !document.hidden) element.animate(FLASH, FLASH_TIMING);
  }

  // A widget from an event, with the notes last read for it: events leave them out.
  function withKnownNotes(widget, known) {
    if (!adminRead || !widget || "internal_notes" in widget) return widget;
    return { ...widget, internal_notes: known?.internal_notes ?? "" };
  }

  // ---- the widget list: one page of the API's list, kept current by the events --------------------------------
  const table = {
    body: $("#widgets tbody"),
    shown: new Map(), // sku -> {tr, widget}, the rows of the page on screen
    view: { offset: 0, search: "", orderBy: "sku", sort: "asc" },
    total: 0,
    loaded: false,
    redraw: new Set(), // skus on the page changed by events since the last frame
    touched: null, // sku -> the newest widget (null: deleted) seen in events while a page is loading
    loading: false,
    again: false,
    lastRead: 0,
    timer: null,

    // Applies an event to the page's state; `draw` shows it on the next frame.
    apply(event) {
      const entry = this.shown.get(event.sku);
      const widget = event.type === "widget.deleted" ? null : withKnownNotes(event.data, entry?.widget);
      this.touched?.set(event.sku, widget);
      if (!widget) {
        if (entry) { visibility.unobserve(entry.tr); entry.tr.remove(); this.shown.delete(event.sku); }
        this.invalidate();
        return;
      }
      if (entry && entry.widget.version < widget.version) { entry.widget = widget; this.redraw.add(event.sku); }
      // A new widget, or a change that can move one into or out of the page (searched, or sorted by a field that
      // changes), needs the page read again: the server knows where it belongs. So does any change to a page that
      // shows notes, which may be what changed.
      if (event.type === "widget.created" || this.view.search || this.view.orderBy !== "sku" || adminRead) {
        this.invalidate();
      }
    },

    draw() {
      for (const sku of this.redraw) {
        const entry = this.shown.get(sku);
        if (entry) { this.fill(entry.tr, entry.widget); flash(entry.tr); }
      }
      this.redraw.clear();
    },

    fill(tr, widget) {
      field(tr, "sku").textContent = widget.sku;
      field(tr, "sku").title = widget.sku;
      field(tr, "name").textContent = widget.name;
      field(tr, "name").title = widget.name;
      field(tr, "price").textContent = price(widget.price_cents);
      field(tr, "price").title = `${widget.price_cents} cents`;
      field(tr, "version").textContent = widget.version;
      field(tr, "updated").textContent = stamp(widget.updated_at);
      const notes = field(tr, "internal_notes");
      if (notes) { notes.textContent = widget.internal_notes; notes.title = widget.internal_notes; }
    },

    // Reads the page again soon, at most once per REFRESH_INTERVAL_MS however many events ask for it.
    invalidate() {
      if (this.timer) return;
      const delay = Math.max(0, this.lastRead + REFRESH_INTERVAL_MS - Date.now());
      this.timer = setTimeout(() => { this.timer = null; this.read(true); }, delay);
    },

    async read(changedByEvents = false) {
      if (this.loading) { this.again = true; return; }
      this.loading = true;
      this.lastRead = Date.now();
      this.touched = new Map();
      const view = { ...this.view };
      const params = new URLSearchParams({ limit: PAGE_SIZE, offset: view.offset, order_by: view.orderBy, sort: view.sort });
      if (view.search) params.set("search", view.search);
      try {
        const response = await fetch(`${WIDGETS_READ}?${params}`, { headers: { Accept: "application/json" } });
        const text = await response.text();
        if (!response.ok) throw new Error(describe(parse(text), response.status));
        if (JSON.stringify(view) === JSON.stringify(this.view)) this.render(parse(text), changedByEvents);
      } catch (error) {
        toast(`Could not read the widgets: ${error.message}`);
      } finally {
        this.touched = null;
        this.loading = false;
        // The view changed while this page was on its way (a search typed, a page turned): read the one asked for.
        if (JSON.stringify(view) !== JSON.stringify(this.view)) this.read();
        else if (this.again) { this.again = false; this.invalidate(); }
      }
    },

    render(page, changedByEvents) {
      if (!page.items.length && this.view.offset > 0 && page.total > 0) {
        // The page emptied under it (widgets deleted): go to the last page there is.
        this.view.offset = Math.floor((page.total - 1) / PAGE_SIZE) * PAGE_SIZE;
        this.again = true;
        return;
      }
      const shown = new Map();
      for (let widget of page.items) {
        if (this.touched.has(widget.sku)) {
          const seen = this.touched.get(widget.sku);
          if (seen === null) continue;
          if (seen.version > widget.version) widget = withKnownNotes(seen, widget);
        }
        let entry = this.shown.get(widget.sku);
        if (!entry) {
          entry = { tr: clone("widget-row") };
          entry.tr.dataset.sku = widget.sku;
          visibility.observe(entry.tr);
          if (changedByEvents) flashWhenSeen.add(entry.tr);
        }
        const previous = entry.widget;
        if (previous?.version !== widget.version || previous?.internal_notes !== widget.internal_notes) {
          this.fill(entry.tr, widget);
        }
        entry.widget = widget;
        shown.set(widget.sku, entry);
      }
      for (const [sku, entry] of this.shown) if (!shown.has(sku)) visibility.unobserve(entry.tr);
      this.body.replaceChildren(...[...shown.values()].map((entry) => entry.tr));
      this.shown = shown;
      this.total = page.total;
      this.loaded = true;
      this.counted();
    },

    counted() {
      const { offset, search } = this.view;
      const shown = this.shown.size;
      let text = this.total === 1 ? "1 widget" : `${count(this.total)} widgets`;
      if (shown < this.total) text = `${count(offset + 1)}–${count(offset + shown)} of ${text}`;
      if (search) text += ` matching “${search}”`;
      $("#widget-count").textContent = text;
      const empty = $("#widgets-empty");
      empty.textContent = search ? "No widget matches this search." : "No widgets yet: create one, or import a CSV.";
      empty.hidden = shown > 0;
      $("#page-previous").disabled = offset === 0;
      $("#page-next").disabled = offset + PAGE_SIZE >= this.total;
    },

    show(changes) {
      Object.assign(this.view, changes);
      this.read();
    },
  };

  let searchTimer = null;
  $("#widget-search").addEventListener("input", (evt) => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => table.show({ search: evt.target.value.trim(), offset: 0 }), SEARCH_DELAY_MS);
  });
  $("#page-previous").addEventListener("click", () => table.show({ offset: Math.max(0, table.view.offset - PAGE_SIZE) }));
  $("#page-next").addEventListener("click", () => table.show({ offset: table.view.offset + PAGE_SIZE }));
  $("#widgets thead").addEventListener("click", (evt) => {
    const button = evt.target.closest("[data-sort]");
    if (!button) return;
    const orderBy = button.dataset.sort;
    const sort = table.view.orderBy === orderBy && table.view.sort === "asc" ? "desc" : "asc";
    for (const th of $("#widgets thead").querySelectorAll("th")) th.removeAttribute("aria-sort");
    button.closest("th").setAttribute("aria-sort", sort === "asc" ? "ascending" : "descending");
    table.show({ orderBy, sort, offset: 0 });
  });

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
    changed: new Set(), // command ids to render on the next frame
    listeners: [],

    track(command) {
      const li = clone("command-item");
      const what = command.type === "import_widgets" ? "import" : `${command.type.replace("_widget", "")} ${command.sku}`;
      field(li, "what").textContent = what;
      field(li, "id").textContent = shortId(command.id);
      field(li, "id").title = command.id;
      li.dataset.commandId = command.id;
      const item = { li, command: { ...command } };
      this.items.set(command.id, item);
      this.list.prepend(li);
      while (this.list.children.length > MAX_COMMANDS_SHOWN) {
        const last = this.list.lastElementChild;
        this.items.delete(last.dataset.commandId);
        last.remove();
      }
      $("#commands-empty").hidden = true;
      const seen = this.outcomes.get(command.id);
      if (seen && !finished(item.command)) this.apply(seen);
      this.render(command.id);
      return item.command;
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
      if (!finished(command) || status !== "running") command.status = status;
      // Each row an import applies is an event of its own: counting them moves the bar between progress events.
      if (command.type === "import_widgets" && event.type.startsWith("widget.")) command.applied = (command.applied || 0) + 1;
      if (event.data.progress) command.progress = event.data.progress;
      if (event.data.result) command.result = event.data.result;
      if (event.data.error) command.error = event.data.error;
      this.changed.add(event.command_id);
    },

    draw() {
      for (const id of this.changed) if (this.items.has(id)) this.render(id);
      this.changed.clear();
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
      else if (command.progress) detail = `${count(done(command))} of ${count(command.progress.total)} rows`;
      field(li, "detail").textContent = detail;
      for (const listener of this.listeners) listener(command);
    },
  };

  function done(command) {
    const progress = command.progress || { done: 0, total: 0 };
    return Math.min(Math.max(progress.done, command.applied || 0), progress.total);
  }

  function importSummary(result) {
    const parts = [`${count(result.total)} rows`, `${count(result.created)} created`, `${count(result.updated)} updated`];
    if (result.unchanged) parts.push(`${count(result.unchanged)} unchanged`);
    parts.push(`${count(result.failed)} failed`);
    return parts.join(", ");
  }

  // ---- the import's progress --------------------------------------------------------------------------------
  const importPanel = {
    watching: null,

    watch(command) {
      this.watching = command.id;
      $("#import-status").hidden = false;
      $("#import-result").replaceChildren();
      this.update(command);
    },

    update(command) {
      if (command.id !== this.watching) return;
      const total = command.progress?.total || 0;
      const percent = finished(command) ? 100 : total ? Math.floor((100 * done(command)) / total) : 0;
      const bar = $("#import-progress");
      bar.setAttribute("aria-valuenow", String(percent));
      bar.dataset.status = command.status;
      // A transform, not a width: the bar moves on the compositor, with no layout of the page.
      $(".bar", bar).style.transform = `scaleX(${percent / 100})`;
      $("#import-progress-text").textContent = finished(command)
        ? `${command.status === "succeeded" ? "Done" : "Failed"}: 100%`
        : `${count(done(command))} of ${count(total)} rows · ${percent}%`;
      if (finished(command)) this.finish(command);
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
      this.watching = null;
    },
  };
  commands.listeners.push((command) => importPanel.update(command));

  // ---- the event log ----------------------------------------------------------------------------------------
  const eventLog = {
    list: $("#events"),

    item(event) {
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
      return li;
    },

    // A frame's events at once: only the newest MAX_EVENTS_SHOWN of them are ever built.
    add(events) {
      if (!events.length) return;
      const items = events.slice(-MAX_EVENTS_SHOWN).reverse().map((event) => this.item(event));
      this.list.prepend(...items);
      while (this.list.children.length > MAX_EVENTS_SHOWN) this.list.lastElementChild.remove();
    },
  };

  // ---- per frame: the events since the last one, applied together -------------------------------------------
  // An import sends thousands of events a second. Each is only queued as it arrives; the page is drawn from the
  // queue once per animation frame, so the work per frame is bounded by what is on screen, not by the events.
  const frames = {
    queue: [],
    scheduled: false,

    push(event) {
      this.queue.push(event);
      if (this.scheduled) return;
      this.scheduled = true;
      requestAnimationFrame(() => this.flush());
      // A hidden tab gets no animation frames: a timer drains the queue there, or it would grow without bound.
      if (document.hidden) setTimeout(() => this.flush(), 500);
    },

    flush() {
      if (!this.scheduled) return;
      this.scheduled = false;
      const batch = this.queue;
      this.queue = [];
      const logged = [];
      for (const event of batch) {
        if (event.type === STREAM_RESET) { table.read(); continue; }
        logged.push(event);
        if (event.type.startsWith("widget.")) table.apply(event);
        commands.apply(event);
      }
      eventLog.add(logged);
      table.draw();
      commands.draw();
    },
  };
  document.addEventListener("visibilitychange", () => { if (frames.scheduled) setTimeout(() => frames.flush(), 0); });

  // ---- the event stream -------------------------------------------------------------------------------------
  // EventSource reconnects by itself (sending Last-Event-ID) after a dropped connection, but gives up for good when a
  // response refuses it (a 429 for too many streams, a 5xx, a 401), and does not say which. From there on this takes
  // over: it retries with a growing delay, resumes after the last event received, and says so on the page.
  const status = $("#stream-status");
  const notice = {
    box: $("#stream-notice"),
    timer: null,

    show(text, { retryAt = null } = {}) {
      clearInterval(this.timer);
      const render = () => {
        const seconds = retryAt ? Math.max(0, Math.ceil((retryAt - Date.now()) / 1000)) : 0;
        $("#stream-notice-text").textContent = retryAt ? `${text} Retrying in ${seconds} s.` : text;
      };
      render();
      if (retryAt) this.timer = setInterval(render, 1000);
      $("#stream-retry").hidden = !retryAt;
      this.box.hidden = false;
    },

    hide() {
      clearInterval(this.timer);
      this.box.hidden = true;
    },
  };
  const showStatus = (text, kind) => { status.textContent = text; status.className = `pill pill-${kind}`; };

  const stream = {
    source: null,
    lastId: null,
    attempts: 0,
    timer: null,

    connect() {
      clearTimeout(this.timer);
      this.source?.close();
      const url = this.lastId ? `/ui/events?last_event_id=${encodeURIComponent(this.lastId)}` : "/ui/events";
      const source = new EventSource(url);
      this.source = source;
      source.addEventListener("open", () => {
        this.attempts = 0;
        showStatus("live", "live");
        notice.hide();
        // Without a cursor the stream starts from now: what happened before (or while it was down) is read afresh.
        if (!this.lastId || !table.loaded) table.read();
      });
      source.addEventListener("error", () => {
        if (source !== this.source) return;
        if (source.readyState === EventSource.CONNECTING) {
          showStatus("reconnecting", "running");
          notice.show("The event stream dropped: reconnecting, resuming after the last event received.");
          return;
        }
        source.close();
        this.refused();
      });
      for (const type of EVENT_TYPES) {
        source.addEventListener(type, (message) => {
          if (type === STREAM_RESET) {
            // The stream no longer holds where this page left off: the list is read again, and so is any cursor.
            this.lastId = null;
            frames.push({ type });
            return;
          }
          if (message.lastEventId) this.lastId = message.lastEventId;
          frames.push(JSON.parse(message.data));
        });
      }
    },

    async refused() {
      showStatus("offline", "failed");
      // A cheap read tells a session that ended (nothing to retry) from a stream refused or a server away for now.
      const probe = await fetch("/ui/widgets?limit=1", { headers: { Accept: "application/json" } }).catch(() => null);
      if (probe?.status === 401) {
        showStatus("signed out", "failed");
        notice.show(describe(null, 401));
        return;
      }
      // The list stays useful without live updates.
      if (!table.loaded && probe?.ok) table.read();
      const base = RETRY_DELAYS_MS[Math.min(this.attempts, RETRY_DELAYS_MS.length - 1)];
      const delay = Math.round(base * (0.8 + 0.4 * Math.random())); // spread, so many pages do not retry at once
      this.attempts += 1;
      notice.show("Live updates paused: the event stream was refused or lost.", { retryAt: Date.now() + delay });
      this.timer = setTimeout(() => this.connect(), delay);
    },
  };
  $("#stream-retry").addEventListener("click", () => stream.connect());

  // ---- forms: htmx sends them as the API's JSON (numbers as numbers) or a CSV file ---------------------------
  // A write waits (`Prefer: wait`) for its outcome, so a command that fails once applied (a duplicate sku, a stale
  // version) is shown beside its form, with the input kept; one that outlasts the wait is followed by its events.
  const snapshot = (form) => JSON.stringify([...new FormData(form)].filter(([, value]) => typeof value === "string"));
  const forms = {
    following: new Map(), // command id -> {form, sent}: the form that sent it, and what it held then

    say(form, text, kind = "problem") {
      const note = $(".problem", form);
      note.textContent = text;
      note.dataset.kind = kind;
      note.hidden = !text;
    },

    follow(form, command) {
      this.following.set(command.id, { form, sent: snapshot(form) });
      if (!finished(command)) this.say(form, "Accepted: waiting for it to be applied…", "pending");
      this.settle(command);
    },

    settle(command) {
      const followed = this.following.get(command.id);
      if (!followed || !finished(command)) return;
      this.following.delete(command.id);
      const { form, sent } = followed;
      if (command.status === "failed") {
        this.say(form, describe(command.error || { detail: "The command failed." }, command.error?.status));
        return;
      }
      this.say(form, "");
      // Typed into since it was sent: that input is the user's next command, not this one's to clear.
      if (snapshot(form) !== sent) return;
      if (form.dataset.reset) form.reset();
      form.closest("dialog")?.close();
    },

    // The form shows another widget now: outcomes of what it sent before are no longer its own.
    forget(form) {
      for (const [id, followed] of this.following) if (followed.form === form) this.following.delete(id);
    },
  };
  commands.listeners.push((command) => forms.settle(command));

  htmx.defineExtension("json-command", {
    onEvent(name, evt) {
      if (name !== "htmx:configRequest") return true;
      const form = evt.detail.elt.closest("form");
      const file = $('input[type="file"]', form)?.files[0];
      if (evt.detail.verb !== "delete") evt.detail.headers["Content-Type"] = file ? "text/csv" : "application/json";
      // An import reports its progress by events; waiting for its end would only hold the request open.
      if (!file) evt.detail.headers.Prefer = `wait=${WRITE_WAIT_S}`;
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
        // An optional field left empty: absent, not "", unless emptying it is the change (notes cleared).
        if (value === "" && !$(`[name="${name}"]`, form).hasAttribute("data-send-empty")) continue;
        body[name] = $(`[name="${name}"]`, form).type === "number" ? Number(value) : value;
      }
      return JSON.stringify(body);
    },
  });

  document.body.addEventListener("htmx:configRequest", (evt) => {
    evt.detail.headers[csrfHeader] = csrfToken;
  });

  const COMMAND_TYPES = { post: "create_widget", patch: "update_widget", delete: "delete_widget" };
  document.body.addEventListener("htmx:afterRequest", (evt) => {
    const form = evt.detail.elt.closest("form[hx-ext~='json-command']");
    if (!form) return;
    const xhr = evt.detail.xhr;
    if (!xhr.status) { forms.say(form, "The server did not answer: check the connection, then send again."); return; }
    const body = parse(xhr.responseText);
    if (xhr.status === 200 || xhr.status === 202) {
      const command = commands.track(body);
      if (command.type === "import_widgets") { forms.say(form, ""); form.reset(); importPanel.watch(command); return; }
      forms.follow(form, command);
      return;
    }
    forms.say(form, describe(body, xhr.status));
    // A command that was accepted, then failed within the wait, is listed with the others.
    if (body?.command) {
      commands.track({
        id: body.command.split("/").pop(),
        type: COMMAND_TYPES[evt.detail.requestConfig.verb],
        sku: form.dataset.sku || form.elements.sku?.value,
        status: "failed",
        error: body,
      });
    }
  });

  // ---- the edit dialog --------------------------------------------------------------------------------------
  const dialog = $("#edit-dialog");
  const editForm = $("#edit-form");
  const editNotes = editForm.elements.internal_notes;
  let opening = 0; // which opening of the dialog a read of the widget answers

  function showInDialog(widget) {
    editForm.dataset.version = widget.version;
    $("#edit-version").textContent = widget.version;
    editForm.elements.name.value = widget.name;
    editForm.elements.price_cents.value = widget.price_cents;
  }

  // The notes are read when the dialog opens, as they are now (the list's may be a second old). Until they arrive
  // the field is disabled, so a save sent before then leaves them as they are.
  async function readNotes(sku) {
    const opened = ++opening;
    const before = snapshot(editForm);
    editNotes.disabled = true;
    editNotes.placeholder = "reading…";
    let widget = null;
    let failure = null;
    try {
      const response = await fetch(`${adminRead}/${encodeURIComponent(sku)}`, { headers: { Accept: "application/json" } });
      const text = await response.text();
      if (response.ok) widget = parse(text);
      else failure = describe(parse(text), response.status);
    } catch {
      failure = "The server did not answer.";
    }
    if (opened !== opening || !dialog.open) return;
    if (!widget) {
      editNotes.placeholder = "";
      forms.say(editForm, `Could not read the internal notes: ${failure}`);
      return;
    }
    // Untouched since it opened: the dialog shows the widget as read now, at its current version. Typed into: the
    // input stays, at the version it was typed against (a save after a change made meanwhile is a conflict).
    if (snapshot(editForm) === before) showInDialog(widget);
    editNotes.value = widget.internal_notes;
    editNotes.placeholder = "";
    editNotes.disabled = false;
  }

  table.body.addEventListener("click", (evt) => {
    const button = evt.target.closest("[data-edit]");
    if (!button) return;
    const { widget } = table.shown.get(button.closest("tr").dataset.sku);
    editForm.reset();
    editForm.dataset.sku = widget.sku;
    $("#edit-sku").textContent = widget.sku;
    showInDialog(widget);
    forms.forget(editForm);
    forms.say(editForm, "");
    dialog.showModal();
    if (editNotes) readNotes(widget.sku);
  });
  $("[data-close]", dialog).addEventListener("click", () => dialog.close());

  stream.connect();
})();
