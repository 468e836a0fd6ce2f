// Sluice console: a client of the same JSON API as the CLI (/api/v1), signed
// in by an HttpOnly session cookie. No build step, no dependencies. Every
// piece of server data reaches the page through textContent, never innerHTML.
"use strict";

const CSRF = document.querySelector('meta[name="sluice-csrf"]').content;
const main = document.getElementById("main");
const ROLES = ["viewer", "operator", "admin"];
let me = { token: "", role: "viewer", pipelines: [] };

// ---------- DOM helpers ----------

/** An element with attributes (on* become listeners) and children. */
function h(tag, attrs, ...kids) {
  return fill(document.createElement(tag), attrs, kids);
}

/** The same for SVG. */
function s(tag, attrs, ...kids) {
  return fill(document.createElementNS("http://www.w3.org/2000/svg", tag), attrs, kids);
}

function fill(el, attrs, kids) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "class") el.setAttribute("class", value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

const enc = encodeURIComponent;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const can = (role) => ROLES.indexOf(me.role) >= ROLES.indexOf(role);
const short = (id) => (id || "").slice(0, 8);

function pill(status, label) {
  return h("span", { class: `pill st-${status}` }, label || words(status));
}

function words(status) {
  return { InProgress: "In progress", NotRun: "Not run" }[status] || status;
}

function when(ms) {
  if (!ms) return "";
  const date = new Date(ms);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

function timeEl(ms) {
  return ms ? h("time", { datetime: new Date(ms).toISOString() }, when(ms)) : "";
}

function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return "";
  if (ms < 1000) return `${ms} ms`;
  const secs = ms / 1000;
  if (secs < 60) return `${secs.toFixed(secs < 10 ? 1 : 0)} s`;
  const mins = Math.floor(secs / 60);
  if (mins < 60) return `${mins} min ${Math.round(secs % 60)} s`;
  return `${Math.floor(mins / 60)} h ${mins % 60} min`;
}

function elapsed(started, ended) {
  return started ? duration((ended || Date.now()) - started) : "";
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(1)} ${units[unit]}`;
}

function empty(text) {
  return h("div", { class: "empty" }, text);
}

function toast(message, kind, link) {
  const box = h("div", { class: `toast ${kind || ""}` }, message, link ? [" ", link] : []);
  document.getElementById("toasts").append(box);
  setTimeout(() => box.remove(), kind === "error" ? 9000 : 5000);
}

function table(headers, rows) {
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, headers.map((name) => h("th", { scope: "col" }, name)))),
      h("tbody", {}, rows),
    ),
  );
}

function keyValues(pairs) {
  if (!pairs.length) return h("p", { class: "muted" }, "None.");
  return h("dl", { class: "kv" }, pairs.map(([k, v]) => [h("dt", {}, k), h("dd", { class: "mono" }, v)]));
}

// ---------- The API ----------

class ApiError extends Error {}

/** Call /api/v1; mutations carry the CSRF token. A 401 sends the user to sign in. */
async function api(path, options) {
  const method = (options && options.method) || "GET";
  const headers = { Accept: "application/json" };
  let body;
  if (method !== "GET") {
    headers["X-Sluice-CSRF"] = CSRF;
    headers["Content-Type"] = "application/json";
    body = JSON.stringify((options && options.body) || {});
  }
  const response = await fetch(`/api/v1${path}`, { method, headers, body, credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) {
    location.assign("/");
    throw new ApiError("Your session ended; sign in again.");
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (_) {
    json = null;
  }
  if (!response.ok) throw new ApiError((json && json.error) || `${response.status} ${response.statusText}`);
  return json;
}

/** Run a mutation from a button: disabled meanwhile, the outcome as a toast. */
async function act(button, work, success) {
  if (button) button.disabled = true;
  try {
    const answer = await work();
    if (success) success(answer);
    return answer;
  } catch (e) {
    toast(e.message, "error");
    return null;
  } finally {
    if (button) button.disabled = false;
  }
}

// ---------- Live events (Server-Sent Events read with fetch, any event name) ----------

const live = { after: null, listeners: new Set() };

function setLive(on) {
  const badge = document.getElementById("live");
  badge.classList.toggle("on", on);
  badge.textContent = on ? "Live" : "Reconnecting…";
}

function dispatch(event) {
  for (const listener of live.listeners) listener(event);
}

async function followEvents() {
  for (;;) {
    try {
      const query = live.after === null ? "" : `?after=${live.after}`;
      const response = await fetch(`/api/v1/events${query}`, { headers: { Accept: "text/event-stream" }, credentials: "same-origin" });
      if (response.status === 401) return location.assign("/");
      if (!response.ok || !response.body) throw new Error(`events: ${response.status}`);
      setLive(true);
      dispatch({ kind: "connected" });
      await readEvents(response.body.pipeThrough(new TextDecoderStream()).getReader());
    } catch (_) {
      // Reconnect below, from the last event seen.
    }
    setLive(false);
    await sleep(1500);
  }
}

async function readEvents(reader) {
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let id = null;
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("id:")) id = line.slice(3).trim();
        else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
      }
      if (id !== null) live.after = Number(id);
      if (data) dispatch(JSON.parse(data));
    }
  }
}

/** Call `refresh` soon, once, however many events arrive meanwhile. */
function debounced(refresh) {
  let timer = null;
  let running = false;
  let again = false;
  const run = async () => {
    timer = null;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await refresh();
    } catch (e) {
      toast(e.message, "error");
    }
    running = false;
    if (again) {
      again = false;
      schedule();
    }
  };
  const schedule = () => {
    if (!timer) timer = setTimeout(run, 120);
  };
  return schedule;
}

/** Replace a region's children, keeping keyboard focus on the same control. */
function redraw(region, ...kids) {
  const focused = document.activeElement;
  const key = focused && region.contains(focused) ? focused.getAttribute("data-key") : null;
  region.replaceChildren(...kids);
  if (key) {
    const again = region.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (again) again.focus();
  }
}

// ---------- Dialogs ----------

/** A modal form; resolves with the button pressed and the form's data, or null. */
function ask(title, fields, buttons) {
  return new Promise((resolve) => {
    const dialog = document.getElementById("dialog");
    const form = h(
      "form",
      { method: "dialog" },
      h("h2", { id: "dialog-title" }, title),
      fields,
      h(
        "div",
        { class: "dialog-buttons" },
        h("button", { type: "submit", value: "cancel", formnovalidate: true }, "Cancel"),
        buttons.map((b) => h("button", { type: "submit", value: b.value, class: b.class || "primary" }, b.label)),
      ),
    );
    dialog.replaceChildren(form);
    dialog.returnValue = "";
    dialog.onclose = () => {
      const choice = dialog.returnValue;
      resolve(!choice || choice === "cancel" ? null : { choice, data: new FormData(form) });
    };
    dialog.showModal();
    const first = form.querySelector("input, textarea, select");
    if (first) first.focus();
  });
}

function field(label, input, hint) {
  return [h("label", { for: input.id }, label, hint ? h("span", { class: "hint" }, ` ${hint}`) : ""), input];
}

// ---------- Router ----------

let view = null;
let generation = 0;

live.listeners.add((event) => view && view.onEvent && view.onEvent(event));

async function route() {
  const hash = location.hash || "#/";
  if (!hash.startsWith("#/")) return;
  const [path, query] = hash.slice(1).split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  if (view && view.dispose) view.dispose();
  view = null;
  const mine = ++generation;
  markNav(parts[0] || "pipelines");
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  try {
    const made = await render(parts, params);
    if (mine !== generation) {
      if (made && made.dispose) made.dispose();
      return;
    }
    view = made;
  } catch (e) {
    if (mine === generation) main.replaceChildren(h("div", { class: "error-box", role: "alert" }, e.message));
  }
}

function render(parts, params) {
  const [first, second] = parts;
  if (!first) return pipelinesView(params);
  if (first === "pipelines" && second) return pipelineView(second);
  if (first === "executions" && second) return executionView(second);
  if (first === "executions") return historyView(params);
  if (first === "plugins") return pluginsView();
  if (first === "audit") return auditView(params);
  main.replaceChildren(empty("There is no such page."), h("p", {}, h("a", { href: "#/" }, "Back to the pipelines")));
  return null;
}

function markNav(section) {
  for (const link of document.querySelectorAll("[data-nav]")) {
    const current = link.dataset.nav === (section === "pipelines" ? "pipelines" : section);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

function title(text) {
  document.title = `${text} · Sluice`;
}

// ---------- Pipelines list ----------

async function pipelinesView(params) {
  title("Pipelines");
  const search = h("input", { type: "search", id: "search", placeholder: "Search pipelines", "aria-label": "Search pipelines", value: params.get("q") || "" });
  const list = h("div", { class: "pipelines", id: "pipeline-list" });
  main.replaceChildren(h("div", { class: "page-head" }, h("h1", {}, "Pipelines"), search), list);
  let rows = [];
  const draw = () => {
    const wanted = search.value.trim().toLowerCase();
    const shown = rows.filter((row) => row.summary.name.toLowerCase().includes(wanted));
    if (!rows.length) return redraw(list, empty("No pipelines yet. Register one with `sluice pipelines put FILE`."));
    if (!shown.length) return redraw(list, empty(`No pipeline matches “${search.value}”.`));
    redraw(list, ...shown.map(pipelineCard));
  };
  const refresh = async () => {
    const { pipelines } = await api("/pipelines");
    const states = await Promise.all(
      pipelines.map((p) => api(`/pipelines/${enc(p.name)}/state`).catch((e) => ({ error: e.message }))),
    );
    rows = pipelines.map((summary, i) => ({ summary, state: states[i] }));
    draw();
  };
  search.addEventListener("input", draw);
  await refresh();
  const schedule = debounced(refresh);
  return { onEvent: (e) => ["stage", "pipeline", "connected"].includes(e.kind) && schedule() };
}

function pipelineCard({ summary, state }) {
  const stages = state.stages || [];
  const latest = stages.map((st) => st.current).filter(Boolean)[0];
  return h(
    "article",
    { class: "card pcard", "data-pipeline": summary.name },
    h(
      "div",
      {},
      h("h2", {}, h("a", { href: `#/pipelines/${enc(summary.name)}`, "data-key": `p-${summary.name}` }, summary.name)),
      h("div", { class: "muted" }, `v${summary.version}`, state.execution_mode ? ` · ${state.execution_mode}` : "", latest ? [" · latest ", h("a", { href: `#/executions/${enc(latest.execution)}` }, short(latest.execution))] : ""),
    ),
    state.error
      ? h("div", { class: "error-box" }, state.error)
      : h(
          "div",
          { class: "strip", "aria-label": "Latest status per stage" },
          stages.map((st, i) => [
            i ? h("span", { class: "arrow", "aria-hidden": "true" }, "→") : "",
            h("span", { class: `pill st-${st.current ? st.current.status : "NotRun"}`, title: st.current ? words(st.current.status) : "Not run" }, st.stage, h("span", { class: "visually-hidden" }, `: ${st.current ? words(st.current.status) : "not run"}`)),
          ]),
        ),
  );
}

// ---------- Pipeline view ----------

async function pipelineView(name) {
  title(name);
  const head = h("div");
  const graph = h("div", { class: "graph", id: "graph", "aria-label": "Stages, left to right" });
  const chart = h("div");
  const recent = h("div");
  main.replaceChildren(
    head,
    h("h2", { class: "visually-hidden" }, "Stages"),
    graph,
    h("h2", {}, "Last 50 executions"),
    chart,
    h("h2", {}, "Recent executions ", h("a", { href: `#/executions?pipeline=${enc(name)}`, class: "hint" }, "full history")),
    recent,
  );
  let state = null;
  let executions = [];
  const refresh = async () => {
    const [fresh, page] = await Promise.all([
      api(`/pipelines/${enc(name)}/state`),
      api(`/executions?pipeline=${enc(name)}&limit=50`),
    ]);
    state = fresh;
    executions = page.executions;
    redraw(head, pipelineHead(state, executions));
    redraw(graph, ...stageGraph(state));
    redraw(chart, executionChart(executions));
    redraw(recent, executionTable(executions.slice(0, 10), false));
  };
  await refresh();
  const schedule = debounced(refresh);
  const ticker = setInterval(() => executions.some((e) => e.status === "InProgress") && redraw(head, pipelineHead(state, executions)), 1000);
  return {
    onEvent: (e) => (e.kind === "connected" || e.pipeline === name) && schedule(),
    dispose: () => clearInterval(ticker),
  };
}

function pipelineHead(state, executions) {
  const running = executions.filter((e) => e.status === "InProgress");
  const buttons = [];
  if (can("operator")) {
    buttons.push(h("button", { class: "primary", "data-key": "start", onclick: (e) => startExecution(e.currentTarget, state) }, "Start execution"));
    for (const execution of running.slice(0, 3)) {
      buttons.push(h("button", { "data-key": `stop-${execution.id}`, onclick: (e) => stopExecution(e.currentTarget, execution.id) }, `Stop ${short(execution.id)}`));
    }
  }
  return h(
    "div",
    {},
    h("div", { class: "crumbs" }, h("a", { href: "#/" }, "Pipelines"), " / "),
    h(
      "div",
      { class: "page-head" },
      h("h1", {}, state.pipeline),
      h("span", { class: "sub" }, `version ${state.version} · ${state.execution_mode} · ${running.length} running`),
      h("div", { class: "buttons" }, buttons),
    ),
  );
}

function stageGraph(state) {
  const out = [];
  state.stages.forEach((stage, index) => {
    if (index > 0) out.push(transitionRail(state, stage));
    out.push(stageCard(state, stage, index));
  });
  return out;
}

function transitionRail(state, stage) {
  const enabled = stage.transition.enabled;
  const toggle = can("operator")
    ? h(
        "button",
        {
          class: "small",
          "aria-pressed": String(enabled),
          "data-key": `transition-${stage.stage}`,
          "aria-label": `Transition into ${stage.stage}: ${enabled ? "enabled" : "disabled"}. ${enabled ? "Disable" : "Enable"} it`,
          onclick: (e) => toggleTransition(e.currentTarget, state.pipeline, stage),
        },
        enabled ? "Disable" : "Enable",
      )
    : "";
  return h(
    "div",
    { class: `transition ${enabled ? "" : "off"}`, title: enabled ? "Transition enabled" : `Transition disabled: ${stage.transition.reason || ""}` },
    h("div", { class: "rail", "aria-hidden": "true" }),
    toggle,
    enabled ? "" : h("div", { class: "reason" }, stage.transition.reason || "disabled"),
  );
}

function stageCard(state, stage, index) {
  const run = stage.current;
  const skip = stage.skipped;
  const status = skip ? "Skipped" : run ? run.status : "NotRun";
  const shown = skip ? skip.execution : run && run.execution;
  const byName = new Map(((run && run.actions) || []).map((a) => [a.action, a]));
  const groups = new Map();
  for (const action of stage.actions || []) {
    if (!groups.has(action.run_order)) groups.set(action.run_order, []);
    groups.get(action.run_order).push(action);
  }
  const orders = [...groups.keys()].sort((a, b) => a - b);
  const headingId = `stage-${index}`;
  return h(
    "section",
    { class: `stage s-${status}`, "aria-labelledby": headingId, "data-stage": stage.stage },
    h(
      "header",
      {},
      h("h3", { id: headingId }, stage.stage),
      pill(status),
      shown ? h("a", { class: "exec mono", href: `#/executions/${enc(shown)}`, "aria-label": `Execution ${shown}` }, short(shown)) : "",
    ),
    skip
      ? h("div", { class: "skip-reason" }, skip.reason || "Skipped.", run ? [" Below: its last run, in ", h("a", { class: "mono", href: `#/executions/${enc(run.execution)}` }, short(run.execution)), "."] : "")
      : "",
    (stage.conditions || []).length
      ? h("div", { class: "conditions" }, stage.conditions.map((c) => h("span", { class: "tag", title: c.rules.join(", ") }, `${c.condition} → ${c.result}`)))
      : "",
    h(
      "ol",
      { class: "groups" },
      orders.map((order) =>
        h(
          "li",
          { class: "group" },
          orders.length > 1 ? h("span", { class: "order" }, `Run order ${order}`) : "",
          h("ul", { class: "actions" }, groups.get(order).map((planned) => actionCard(state, run, planned, byName.get(planned.action)))),
        ),
      ),
    ),
    stageButtons(state, stage, index, run),
  );
}

function actionCard(state, run, planned, current) {
  const approval = current && current.approval;
  const waiting = approval && approval.status === "pending";
  const status = current ? (waiting ? "Waiting" : current.status) : "NotRun";
  return h(
    "li",
    { class: `action s-${status}`, "data-action": planned.action },
    h("div", { class: "line1" }, h("span", { class: "name" }, planned.action), pill(status, waiting ? "Waiting for approval" : undefined)),
    h("div", { class: "meta" }, planned.provider, current && current.started_ms ? ` · ${elapsed(current.started_ms, current.ended_ms)}` : "", current && current.attempts > 1 ? ` · attempt ${current.attempts}` : ""),
    current && current.summary ? h("div", { class: "summary" }, current.summary) : "",
    current && current.error ? h("div", { class: "err" }, current.error) : "",
    !waiting && current && current.status === "InProgress" && current.percent !== null && current.percent !== undefined
      ? h("div", { class: "progress", role: "progressbar", "aria-valuenow": current.percent, "aria-valuemin": 0, "aria-valuemax": 100, "aria-label": current.progress || "Progress" }, progressBar(current.percent))
      : "",
    waiting ? approvalBox(run, current, approval) : "",
  );
}

function progressBar(percent) {
  const bar = h("span");
  bar.style.width = `${Math.max(0, Math.min(100, percent))}%`;
  return bar;
}

function approvalBox(run, action, approval) {
  const allowed = can(approval.approvers);
  return h(
    "div",
    { class: "approval-box" },
    h("p", {}, approval.message || "Approve to go on."),
    allowed
      ? h("button", { class: "primary small", "data-key": `approve-${action.action}`, onclick: (e) => decide(e.currentTarget, run.execution, action.action, approval) }, "Review…")
      : h("span", { class: "meta" }, `Needs role ${approval.approvers}.`),
  );
}

function stageButtons(state, stage, index, run) {
  if (!can("operator")) return "";
  const buttons = [];
  if (run && run.status === "Failed") {
    buttons.push(h("button", { class: "small", "data-key": `retry-${stage.stage}`, onclick: (e) => retryStage(e.currentTarget, run.execution, stage.stage) }, "Retry stage"));
  }
  if (index > 0) {
    buttons.push(h("button", { class: "small", "data-key": `rollback-${stage.stage}`, onclick: (e) => rollbackStage(e.currentTarget, state.pipeline, stage.stage) }, "Roll back…"));
  }
  return buttons.length ? h("footer", {}, buttons) : "";
}

function executionChart(executions) {
  if (!executions.length) return empty("No executions yet.");
  const ordered = [...executions].reverse();
  const longest = Math.max(1, ...ordered.map((e) => (e.ended_ms || Date.now()) - e.started_ms));
  const width = 600;
  const height = 130;
  const slot = width / 50;
  const bars = ordered.map((e, i) => {
    const took = (e.ended_ms || Date.now()) - e.started_ms;
    // A square-root scale: one execution that waited an hour for its
    // approval does not flatten the others.
    const barHeight = Math.max(2, Math.sqrt(took / longest) * (height - 16));
    const label = `${short(e.id)}: ${words(e.status)}, ${duration(took)}, ${when(e.started_ms)}`;
    return s(
      "a",
      { href: `#/executions/${enc(e.id)}`, "aria-label": label },
      s("title", {}, label),
      s("rect", { class: `bar st-${e.status}`, x: (i * slot + 1).toFixed(1), y: (height - barHeight).toFixed(1), width: (slot - 2).toFixed(1), height: barHeight.toFixed(1), rx: 1.5 }),
    );
  });
  const counts = {};
  for (const e of executions) counts[e.status] = (counts[e.status] || 0) + 1;
  const summary = Object.entries(counts).map(([k, v]) => `${v} ${words(k).toLowerCase()}`).join(", ");
  return h(
    "figure",
    { class: "chart" },
    s(
      "svg",
      { viewBox: `0 0 ${width} ${height + 2}`, preserveAspectRatio: "none", role: "group", "aria-label": "Duration and outcome of each execution, oldest first" },
      s("line", { class: "axis", x1: 0, y1: height + 1, x2: width, y2: height + 1 }),
      bars,
    ),
    h("figcaption", {}, `${executions.length} executions, oldest on the left; bar height grows with the square root of the duration, the tallest is ${duration(longest)}. ${summary}.`),
  );
}

function executionTable(executions, withPipeline) {
  if (!executions.length) return empty("No executions.");
  const headers = ["Execution", ...(withPipeline ? ["Pipeline"] : []), "Status", "Trigger", "Started", "Duration"];
  return table(
    headers,
    executions.map((e) =>
      h(
        "tr",
        {},
        h("td", {}, h("a", { class: "mono", href: `#/executions/${enc(e.id)}` }, short(e.id))),
        withPipeline ? h("td", {}, h("a", { href: `#/pipelines/${enc(e.pipeline)}` }, e.pipeline)) : "",
        h("td", {}, pill(e.status)),
        h("td", {}, triggerText(e)),
        h("td", {}, timeEl(e.started_ms)),
        h("td", { class: "num" }, elapsed(e.started_ms, e.ended_ms)),
      ),
    ),
  );
}

function triggerText(execution) {
  const trigger = execution.trigger || {};
  const kind = trigger.kind || "manual";
  const detail = trigger.revision || trigger.branch || trigger.event || "";
  return detail ? `${kind} · ${String(detail).slice(0, 12)}` : kind;
}

// ---------- Mutations ----------

async function startExecution(button, state) {
  const variables = Object.entries(state.variables || {});
  const fields = variables.map(([name, fallback]) =>
    field(name, h("input", { id: `var-${name}`, name, value: fallback === null ? "" : fallback, required: fallback === null }), fallback === null ? "(required)" : ""),
  );
  const answer = await ask(`Start ${state.pipeline}`, variables.length ? fields : h("p", { class: "muted" }, "This pipeline declares no variables."), [{ value: "start", label: "Start" }]);
  if (!answer) return;
  const overrides = {};
  for (const [name, fallback] of variables) {
    const value = answer.data.get(name);
    if (value !== fallback) overrides[name] = value;
  }
  await act(button, () => api(`/pipelines/${enc(state.pipeline)}/executions`, { method: "POST", body: { variables: overrides } }), (started) =>
    toast(`Started execution ${short(started.id)}.`, "", h("a", { href: `#/executions/${enc(started.id)}` }, "Open")),
  );
}

async function stopExecution(button, id) {
  const answer = await ask(
    `Stop execution ${short(id)}`,
    [
      h(
        "fieldset",
        {},
        h("legend", {}, "Running actions"),
        h("label", {}, h("input", { type: "radio", name: "mode", value: "finish", checked: true }), "Let them finish"),
        h("label", {}, h("input", { type: "radio", name: "mode", value: "abandon" }), "Abandon them"),
      ),
      field("Reason", h("input", { id: "stop-reason", name: "reason" }), "(optional)"),
    ],
    [{ value: "stop", label: "Stop", class: "danger" }],
  );
  if (!answer) return;
  const reason = answer.data.get("reason");
  const body = { mode: answer.data.get("mode") };
  if (reason) body.reason = reason;
  await act(button, () => api(`/executions/${enc(id)}/stop`, { method: "POST", body }), () => toast(`Stopping ${short(id)}.`));
}

async function decide(button, execution, action, approval) {
  const answer = await ask(
    `Approval: ${action}`,
    [h("p", {}, approval.message || "Approve to let the execution go on."), h("p", { class: "hint" }, `Expires ${when(approval.expires_ms)}.`), field("Comment", h("textarea", { id: "approval-comment", name: "comment" }), "(recorded with the decision)")],
    [
      { value: "reject", label: "Reject", class: "danger" },
      { value: "approve", label: "Approve" },
    ],
  );
  if (!answer) return;
  const body = { decision: answer.choice, token: approval.token, comment: answer.data.get("comment") || "" };
  await act(button, () => api(`/executions/${enc(execution)}/approvals/${enc(action)}`, { method: "POST", body }), (decided) =>
    toast(`${action}: ${decided.status} by ${decided.by}.`),
  );
}

async function retryStage(button, execution, stage) {
  const answer = await ask(
    `Retry ${stage}`,
    h(
      "fieldset",
      {},
      h("legend", {}, "Run again"),
      h("label", {}, h("input", { type: "radio", name: "mode", value: "failed", checked: true }), "The failed actions"),
      h("label", {}, h("input", { type: "radio", name: "mode", value: "all" }), "Every action of the stage"),
    ),
    [{ value: "retry", label: "Retry" }],
  );
  if (!answer) return;
  await act(button, () => api(`/executions/${enc(execution)}/stages/${enc(stage)}/retry`, { method: "POST", body: { mode: answer.data.get("mode") } }), () =>
    toast(`Retrying ${stage}.`),
  );
}

async function rollbackStage(button, pipeline, stage) {
  const answer = await ask(
    `Roll back ${stage}`,
    [
      h("p", {}, "Runs this stage again with the artifacts and variables of an earlier execution that succeeded in it under the current version."),
      field("Execution to go back to", h("input", { id: "rollback-target", name: "execution", placeholder: "the one before the latest success", class: "mono" }), "(optional: an id or a prefix)"),
    ],
    [{ value: "rollback", label: "Roll back", class: "danger" }],
  );
  if (!answer) return;
  const target = (answer.data.get("execution") || "").trim();
  const body = target ? { execution: target } : {};
  await act(button, () => api(`/pipelines/${enc(pipeline)}/stages/${enc(stage)}/rollback`, { method: "POST", body }), (started) =>
    toast(`Rollback ${short(started.id)} started.`, "", h("a", { href: `#/executions/${enc(started.id)}` }, "Open")),
  );
}

async function toggleTransition(button, pipeline, stage) {
  const path = `/pipelines/${enc(pipeline)}/stages/${enc(stage.stage)}/transition`;
  if (!stage.transition.enabled) {
    await act(button, () => api(path, { method: "PUT", body: { enabled: true } }), () => toast(`Transition into ${stage.stage} enabled.`));
    return;
  }
  const answer = await ask(`Disable the transition into ${stage.stage}`, field("Reason", h("input", { id: "transition-reason", name: "reason", required: true })), [{ value: "disable", label: "Disable", class: "danger" }]);
  if (!answer) return;
  await act(button, () => api(path, { method: "PUT", body: { enabled: false, reason: answer.data.get("reason") } }), () => toast(`Transition into ${stage.stage} disabled.`));
}

async function overrideCondition(button, execution, stage, condition) {
  const answer = await ask(`Override ${stage} ${condition}`, h("p", {}, "Runs the stage again as if this condition's rules had passed. The audit log records who did it."), [{ value: "override", label: "Override", class: "danger" }]);
  if (!answer) return;
  await act(button, () => api(`/executions/${enc(execution)}/stages/${enc(stage)}/conditions/${enc(condition)}/override`, { method: "POST" }), () =>
    toast(`${stage}: ${condition} overridden.`),
  );
}

// ---------- Execution view ----------

async function executionView(id) {
  title(`Execution ${short(id)}`);
  const head = h("div");
  const timeline = h("div");
  const rules = h("div");
  const actions = h("div", { id: "actions" });
  main.replaceChildren(head, h("h2", {}, "Timeline"), timeline, rules, h("h2", {}, "Actions"), actions);
  const panes = new Map();
  let detail = null;
  const refresh = async () => {
    const [fresh, list] = await Promise.all([api(`/executions/${enc(id)}`), api(`/executions/${enc(id)}/artifacts`)]);
    detail = fresh;
    redraw(head, executionHead(detail));
    redraw(timeline, executionTimeline(detail));
    redraw(rules, ...ruleSection(detail));
    drawActions(actions, panes, detail, list.artifacts);
  };
  await refresh();
  const schedule = debounced(refresh);
  let stopped = false;
  const follow = async () => {
    while (!stopped) {
      for (const pane of panes.values()) if (pane.element.open) await pane.follow();
      await sleep(1000);
    }
  };
  follow();
  return {
    onEvent: (e) => (e.kind === "connected" || e.execution === detail.execution.id) && schedule(),
    dispose: () => {
      stopped = true;
    },
  };
}

function executionHead(detail) {
  const e = detail.execution;
  const buttons = [];
  if (can("operator") && e.status === "InProgress") {
    buttons.push(h("button", { "data-key": "stop", onclick: (ev) => stopExecution(ev.currentTarget, e.id) }, "Stop"));
  }
  const variables = Object.entries(e.variables || {});
  return h(
    "div",
    {},
    h("div", { class: "crumbs" }, h("a", { href: "#/" }, "Pipelines"), " / ", h("a", { href: `#/pipelines/${enc(e.pipeline)}` }, e.pipeline), " / "),
    h("div", { class: "page-head" }, h("h1", {}, `Execution ${short(e.id)}`), pill(e.status), h("div", { class: "buttons" }, buttons)),
    h(
      "div",
      { class: "card" },
      h(
        "dl",
        { class: "kv" },
        h("dt", {}, "Id"), h("dd", { class: "mono" }, e.id),
        h("dt", {}, "Pipeline"), h("dd", {}, h("a", { href: `#/pipelines/${enc(e.pipeline)}` }, e.pipeline), e.pipeline_version ? ` (version ${e.pipeline_version})` : ""),
        h("dt", {}, "Trigger"), h("dd", {}, triggerText(e)),
        h("dt", {}, "Started"), h("dd", {}, timeEl(e.started_ms)),
        h("dt", {}, "Duration"), h("dd", {}, elapsed(e.started_ms, e.ended_ms)),
        variables.length ? [h("dt", {}, "Variables"), h("dd", { class: "mono" }, variables.map(([k, v]) => `${k}=${v}`).join("  "))] : "",
        e.error ? [h("dt", {}, "Error"), h("dd", { class: "rule-fail" }, e.error)] : "",
      ),
    ),
  );
}

function executionTimeline(detail) {
  const e = detail.execution;
  const start = e.started_ms;
  const end = Math.max(e.ended_ms || Date.now(), ...detail.actions.map((a) => a.ended_ms || 0), ...detail.stages.map((st) => st.ended_ms || 0));
  const span = Math.max(1, end - start);
  const segment = (status, from, to) => {
    const seg = h("span", { class: `seg st-${status}` });
    seg.style.left = `${((Math.max(from, start) - start) / span) * 100}%`;
    seg.style.width = `${Math.max(0.4, (((to || Date.now()) - Math.max(from, start)) / span) * 100)}%`;
    return h("div", { class: "track", "aria-hidden": "true" }, seg);
  };
  if (!detail.stages.length) return empty("No stage has started yet.");
  const rows = [];
  for (const stage of detail.stages) {
    rows.push(h("li", { class: "stage-row" }, h("span", { class: "label" }, stage.stage, " ", pill(stage.status)), stage.started_ms ? segment(stage.status, stage.started_ms, stage.ended_ms) : h("span"), h("span", { class: "dur" }, elapsed(stage.started_ms, stage.ended_ms))));
    for (const action of detail.actions.filter((a) => a.stage === stage.stage)) {
      rows.push(
        h(
          "li",
          { class: "action-row" },
          h("span", { class: "label" }, h("a", { href: `#act-${action.stage}-${action.action}`, onclick: (ev) => openPane(ev, action) }, action.action), " ", pill(action.status)),
          action.started_ms ? segment(action.status, action.started_ms, action.ended_ms) : h("span"),
          h("span", { class: "dur" }, elapsed(action.started_ms, action.ended_ms)),
        ),
      );
    }
  }
  return h("ol", { class: "timeline", "aria-label": "Stages and actions over time" }, rows);
}

function openPane(event, action) {
  event.preventDefault();
  const pane = document.getElementById(`act-${action.stage}-${action.action}`);
  if (!pane) return;
  pane.open = true;
  pane.querySelector("summary").focus();
  pane.scrollIntoView({ block: "start", behavior: "smooth" });
}

function ruleSection(detail) {
  if (!detail.rules.length) return [];
  const overridable = new Set();
  const rows = detail.rules.map((rule) => {
    const key = `${rule.stage}/${rule.condition}`;
    let button = "";
    if (!rule.passed && can("operator") && rule.condition !== "on-failure" && !overridable.has(key)) {
      overridable.add(key);
      button = h("button", { class: "small", "data-key": `override-${key}`, onclick: (e) => overrideCondition(e.currentTarget, detail.execution.id, rule.stage, rule.condition) }, "Override…");
    }
    return h(
      "tr",
      {},
      h("td", {}, rule.stage),
      h("td", {}, rule.condition),
      h("td", {}, rule.rule),
      h("td", {}, h("span", { class: rule.passed ? "rule-pass" : "rule-fail" }, rule.passed ? "Passed" : "Failed")),
      h("td", {}, rule.detail),
      h("td", {}, timeEl(rule.ts_ms)),
      h("td", {}, button),
    );
  });
  return [h("h2", {}, "Rule evaluations"), table(["Stage", "Condition", "Rule", "Result", "Detail", "When", ""], rows)];
}

/** One <details> per action, kept across refreshes so open panes and their logs stay. */
function drawActions(container, panes, detail, artifacts) {
  if (!detail.actions.length) return redraw(container, empty("No action has started yet."));
  const order = [];
  for (const action of detail.actions) {
    const key = `${action.stage}/${action.action}`;
    let pane = panes.get(key);
    if (!pane) {
      pane = actionPane(detail.execution.id, action);
      panes.set(key, pane);
    }
    pane.update(action, detail, artifacts);
    order.push(pane.element);
  }
  if (container.querySelector(".empty")) container.replaceChildren();
  order.forEach((element, i) => {
    if (container.children[i] !== element) container.insertBefore(element, container.children[i] || null);
  });
}

function actionPane(execution, action) {
  const summary = h("summary");
  const info = h("div");
  const log = h("pre", { class: "log", tabindex: "0", "aria-label": `Log of ${action.action}` });
  const matches = h("span", { class: "log-matches", "aria-live": "polite" });
  /** Hide the lines without the searched text (any case); say how many have it. */
  const applySearch = () => {
    const wanted = search.value.trim().toLowerCase();
    const lines = [...log.querySelectorAll(".line")];
    const shown = lines.filter((line) => {
      line.hidden = !!wanted && !line.dataset.text.includes(wanted);
      return !line.hidden;
    }).length;
    matches.textContent = wanted ? `${shown} of ${lines.length} lines` : "";
  };
  const search = h("input", { type: "search", class: "log-search", placeholder: "Search this log", "aria-label": `Search the log of ${action.action}`, oninput: applySearch });
  const download = h("a", { class: "log-download", href: `/api/v1/executions/${enc(execution)}/logs/download?action=${enc(action.action)}`, download: true }, "Download");
  const tools = h("div", { class: "log-tools" }, search, matches, download);
  const element = h("details", { class: "act", id: `act-${action.stage}-${action.action}` }, summary, h("div", { class: "body" }, info, h("div", {}, h("h4", {}, "Log"), tools, log)));
  let last = null;
  let finished = false;
  const pane = {
    element,
    update(fresh, detail, artifacts) {
      summary.replaceChildren(
        pill(fresh.status),
        h("span", { class: "name" }, `${fresh.stage} / ${fresh.action}`),
        h("span", { class: "meta" }, `${fresh.plugin} · ${elapsed(fresh.started_ms, fresh.ended_ms)}${fresh.attempts > 1 ? ` · ${fresh.attempts} attempts` : ""}`),
        fresh.summary || fresh.error ? h("span", { class: "summary" }, fresh.error || fresh.summary) : "",
      );
      info.replaceChildren(...actionInfo(execution, fresh, detail, artifacts));
    },
    async follow() {
      if (finished) return;
      const query = last === null ? `?action=${enc(action.action)}` : `?action=${enc(action.action)}&after=${last}`;
      const page = await api(`/executions/${enc(execution)}/logs${query}`).catch(() => null);
      if (!page) return;
      if (last === null && !page.lines.length) log.textContent = "(no output yet)";
      else if (last === null) log.textContent = "";
      for (const line of page.lines) {
        log.append(logLine(line));
        last = line.id;
      }
      if (page.lines.length) {
        applySearch();
        log.scrollTop = log.scrollHeight;
      }
      if (page.status !== "InProgress" && page.status !== "Stopping") finished = true;
    },
  };
  element.addEventListener("toggle", () => element.open && pane.follow());
  return pane;
}

function actionInfo(execution, action, detail, artifacts) {
  const outputs = action.outputs.map((o) =>
    h(
      "tr",
      {},
      h("td", {}, o.name),
      h("td", { class: "digest" }, o.digest),
      h("td", { class: "num" }, `${o.files} files, ${bytes(o.bytes)}`),
      h("td", {}, h("a", { href: `/api/v1/executions/${enc(execution)}/artifacts/${enc(o.name)}`, download: `${o.name}.tar` }, "Download")),
    ),
  );
  const inputs = (detail.inputs || []).filter((i) => i.stage === action.stage && i.action === action.action).flatMap((i) => i.artifacts);
  const inputRows = inputs.map((name) => {
    const found = artifacts.find((a) => a.name === name);
    return h(
      "tr",
      {},
      h("td", {}, name),
      h("td", { class: "digest" }, found ? found.digest : "(from an earlier execution)"),
      h("td", { class: "num" }, found ? `${found.files} files, ${bytes(found.bytes)}` : ""),
      h("td", {}, found ? h("a", { href: `/api/v1/executions/${enc(execution)}/artifacts/${enc(name)}`, download: `${name}.tar` }, "Download") : ""),
    );
  });
  return [
    action.error ? h("div", { class: "error-box" }, action.error) : "",
    h("div", {}, h("h4", {}, "Resolved configuration"), keyValues(action.resolved_config)),
    h("div", {}, h("h4", {}, "Input artifacts"), inputRows.length ? table(["Name", "Digest (blake3)", "Size", ""], inputRows) : h("p", { class: "muted" }, "None.")),
    h("div", {}, h("h4", {}, "Output artifacts"), outputs.length ? table(["Name", "Digest (blake3)", "Size", ""], outputs) : h("p", { class: "muted" }, "None.")),
    h("div", {}, h("h4", {}, "Output variables"), keyValues(action.variables)),
  ];
}

function logLine(record) {
  const line = h("div", { class: record.stream === "stderr" ? "line err-line" : "line" });
  const text = ansi(record.line);
  line.append(h("span", { class: "ts" }, `${new Date(record.ts_ms).toLocaleTimeString()} `), ...text);
  // What a search looks in: the shown text, without the time or colour escapes.
  line.dataset.text = text.map((part) => (part instanceof Node ? part.textContent : part)).join("").toLowerCase();
  return line;
}

/** ANSI SGR colours and weights as spans; every other escape sequence dropped. */
function ansi(text) {
  const out = [];
  const style = { fg: null, bold: false, dim: false, italic: false, underline: false };
  const pattern = /\x1b\[([0-9;?]*)([A-Za-z])/g;
  let at = 0;
  let match;
  const push = (chunk) => {
    if (!chunk) return;
    const classes = [];
    if (style.fg) classes.push(`ansi-${style.fg}`);
    if (style.bold) classes.push("ansi-b");
    if (style.dim) classes.push("ansi-dim");
    if (style.italic) classes.push("ansi-i");
    if (style.underline) classes.push("ansi-u");
    out.push(classes.length ? h("span", { class: classes.join(" ") }, chunk) : chunk);
  };
  while ((match = pattern.exec(text))) {
    push(text.slice(at, match.index));
    at = pattern.lastIndex;
    if (match[2] !== "m") continue;
    const codes = match[1] === "" ? [0] : match[1].split(";").map(Number);
    for (let i = 0; i < codes.length; i++) {
      const code = codes[i];
      if (code === 0) Object.assign(style, { fg: null, bold: false, dim: false, italic: false, underline: false });
      else if (code === 1) style.bold = true;
      else if (code === 2) style.dim = true;
      else if (code === 3) style.italic = true;
      else if (code === 4) style.underline = true;
      else if (code === 22) style.bold = style.dim = false;
      else if (code === 23) style.italic = false;
      else if (code === 24) style.underline = false;
      else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) style.fg = code;
      else if (code === 39) style.fg = null;
      else if (code === 38 && codes[i + 1] === 5) {
        const n = codes[i + 2];
        style.fg = n < 8 ? 30 + n : n < 16 ? 82 + n : null;
        i += 2;
      } else if (code === 38 && codes[i + 1] === 2) i += 4;
    }
  }
  push(text.slice(at).replace(/\x1b/g, ""));
  return out;
}

// ---------- History ----------

const STATUSES = ["InProgress", "Succeeded", "Failed", "Superseded", "Stopping", "Stopped"];
const PAGE = 25;

async function historyView(params) {
  title("History");
  const pipeline = params.get("pipeline") || "";
  const status = params.get("status") || "";
  const offset = Math.max(0, Number(params.get("offset")) || 0);
  const { pipelines } = await api("/pipelines");
  const go = (changes) => {
    const next = new URLSearchParams({ pipeline, status, offset: String(offset), ...changes });
    for (const [k, v] of [...next]) if (!v || v === "0") next.delete(k);
    location.hash = `#/executions${next.toString() ? `?${next}` : ""}`;
  };
  const pipelineSelect = h("select", { id: "filter-pipeline", onchange: (e) => go({ pipeline: e.target.value, offset: "0" }) }, h("option", { value: "" }, "All pipelines"), pipelines.map((p) => h("option", { value: p.name, selected: p.name === pipeline }, p.name)));
  const statusSelect = h("select", { id: "filter-status", onchange: (e) => go({ status: e.target.value, offset: "0" }) }, h("option", { value: "" }, "Any status"), STATUSES.map((st) => h("option", { value: st, selected: st === status }, words(st))));
  const list = h("div");
  const pager = h("div", { class: "pager" });
  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Execution history")),
    h("div", { class: "filters" }, h("div", {}, h("label", { for: "filter-pipeline" }, "Pipeline"), pipelineSelect), h("div", {}, h("label", { for: "filter-status" }, "Status"), statusSelect)),
    list,
    pager,
  );
  const refresh = async () => {
    const query = new URLSearchParams({ limit: String(PAGE + 1), offset: String(offset) });
    if (pipeline) query.set("pipeline", pipeline);
    if (status) query.set("status", status);
    const page = await api(`/executions?${query}`);
    const more = page.executions.length > PAGE;
    redraw(list, executionTable(page.executions.slice(0, PAGE), true));
    redraw(
      pager,
      h("span", {}, page.executions.length ? `${offset + 1}–${offset + Math.min(PAGE, page.executions.length)}` : ""),
      h("button", { "data-key": "prev", disabled: offset === 0, onclick: () => go({ offset: String(Math.max(0, offset - PAGE)) }) }, "← Newer"),
      h("button", { "data-key": "next", disabled: !more, onclick: () => go({ offset: String(offset + PAGE) }) }, "Older →"),
    );
  };
  await refresh();
  const schedule = debounced(refresh);
  return { onEvent: (e) => offset === 0 && (e.kind === "pipeline" || e.kind === "connected") && schedule() };
}

// ---------- Plugins ----------

async function pluginsView() {
  title("Plugins");
  const { plugins } = await api("/plugins");
  const capabilities = (c) => {
    const list = (items) => (items.length ? items.join(", ") : "none");
    return h(
      "ul",
      { class: "caps" },
      h("li", {}, `Secrets: ${list(c.secrets)}`),
      h("li", {}, `Outbound HTTP: ${list(c.hosts)}`),
      h("li", {}, `Commands: ${list(c.commands)}`),
      h("li", {}, `Host mounts: ${c.mounts ? "yes" : "no"}`),
      h("li", {}, `Caches: ${c.caches ? "yes" : "no"}`),
    );
  };
  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Plugins"), h("span", { class: "sub" }, `${plugins.length} installed`)),
    plugins.length
      ? table(
          ["Plugin", "Version", "World", "Component digest (sha256)", "May request"],
          plugins.map((p) =>
            h(
              "tr",
              { "data-plugin": p.name },
              h("td", {}, h("strong", {}, p.name), p.description ? h("div", { class: "muted" }, p.description) : ""),
              h("td", { class: "mono" }, p.version),
              h("td", {}, p.world),
              h("td", { class: "digest" }, p.sha256 || "(not pinned)"),
              h("td", {}, capabilities(p.capabilities)),
            ),
          ),
        )
      : empty("No plugins installed. `sluice plugin install DIR` installs one."),
  );
  return null;
}

// ---------- Audit ----------

async function auditView(params) {
  title("Audit log");
  if (!can("admin")) {
    main.replaceChildren(h("div", { class: "error-box", role: "alert" }, `The audit log needs role admin; this token (${me.token}) has role ${me.role}.`));
    return null;
  }
  const after = Math.max(0, Number(params.get("after")) || 0);
  const { entries } = await api(`/audit?after=${after}&limit=${PAGE * 4 + 1}`);
  const more = entries.length > PAGE * 4;
  const shown = entries.slice(0, PAGE * 4);
  const next = shown.length ? shown[shown.length - 1].seq : after;
  main.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Audit log"), h("span", { class: "sub" }, "Every mutating call and token change, oldest first")),
    shown.length
      ? table(
          ["#", "When", "Who", "What", "Result", "Pipeline"],
          shown.map((entry) =>
            h("tr", {}, h("td", { class: "num" }, entry.seq), h("td", {}, timeEl(entry.ts_ms)), h("td", { class: "mono" }, entry.actor), h("td", { class: "mono" }, entry.action), h("td", {}, entry.result), h("td", {}, entry.pipeline || "")),
          ),
        )
      : empty("No entries."),
    h(
      "div",
      { class: "pager" },
      after > 0 ? h("a", { class: "button", href: "#/audit" }, "First page") : "",
      more ? h("a", { class: "button", href: `#/audit?after=${next}` }, "Later entries →") : "",
    ),
  );
  return null;
}

// ---------- Start ----------

async function boot() {
  document.getElementById("skip").addEventListener("click", (e) => {
    e.preventDefault();
    main.focus();
  });
  try {
    me = await api("/whoami");
  } catch (e) {
    main.replaceChildren(h("div", { class: "error-box", role: "alert" }, e.message));
    return;
  }
  document.getElementById("who").textContent = `${me.token} · ${me.role}`;
  document.getElementById("nav-audit").hidden = !can("admin");
  window.addEventListener("hashchange", async () => {
    await route();
    main.focus({ preventScroll: true });
  });
  followEvents();
  await route();
}

boot();
