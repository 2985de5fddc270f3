// Switchboard console: plain JavaScript, no build step, no third-party code. Everything it shows
// comes from the same /v1 API the workflows use, authenticated by the HttpOnly session cookie;
// every write sends the session's CSRF token (from the sb_console_csrf cookie) in X-CSRF-Token.
// Text is always inserted as text nodes (never innerHTML), so data from the API cannot inject
// markup.
"use strict";

const $ = (id) => document.getElementById(id);

// h("tag", {attr: value, onclick: fn}, child, ...): an element; strings become text nodes.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function csrfToken() {
  const m = document.cookie.split(";").map((c) => c.trim()).find((c) => c.startsWith("sb_console_csrf="));
  return m ? decodeURIComponent(m.slice("sb_console_csrf=".length)) : "";
}

class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || {};
  }
}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method,
    headers,
    credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (res.status === 401 && path !== "/console/session") {
    showSignIn("Your console session has ended. Sign in again.");
    throw new ApiError(401, data);
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

const fmtTime = (t) => (t ? new Date(t).toLocaleString() : "—");
const enc = encodeURIComponent;

function statusBadge(s) {
  return h("span", { class: `status ${s}` }, s.replace(/_/g, " "));
}

function problemView(err) {
  const p = err.problem || {};
  return h("div", { class: "card", role: "alert" },
    h("p", { class: "error" }, `${err.status || ""} ${p.code || ""}: ${err.message}`),
    Array.isArray(p.errors) && p.errors.length
      ? h("ul", {}, p.errors.map((e) => h("li", {}, `${e.field}: ${e.message}`)))
      : null);
}

// A setting value as the API masks it: {"set": true} is a secret that is set (never shown).
function settingValue(v) {
  if (v && typeof v === "object" && !Array.isArray(v) && "set" in v) {
    return h("span", { class: "masked" }, v.set ? "secret (set, hidden)" : "secret (not set)");
  }
  return typeof v === "string" ? v : JSON.stringify(v);
}

function dl(pairs) {
  return h("dl", {}, pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function table(caption, head, rows) {
  return h("table", {},
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: head.length }, "Nothing yet."))));
}

function setView(title, ...content) {
  const view = $("view");
  view.replaceChildren(h("h1", { id: "view-title" }, title), ...content);
  document.title = `${title} · Switchboard console`;
}

// ---------------------------------------------------------------------------------------------
// Pages
// ---------------------------------------------------------------------------------------------

async function connectorsPage() {
  setView("Connectors and setups", h("p", { class: "muted" }, "Loading…"));
  const { connectors } = await api("GET", "/v1/connectors");
  const cards = await Promise.all(connectors.map(async (c) => {
    let setup = null;
    let setupError = null;
    try {
      setup = await api("GET", `/v1/connectors/${enc(c.id)}/setup`);
    } catch (e) {
      if (e.status !== 404) setupError = e;
    }
    const setupPart = setupError
      ? problemView(setupError)
      : !setup
        ? h("p", { class: "muted" }, "No setup yet: PUT /v1/connectors/" + c.id + "/setup")
        : h("div", {},
          h("h3", {}, "Setup"),
          dl([
            ...Object.entries(setup.settings || {}).map(([k, v]) => [k, settingValue(v)]),
            ["Updated", fmtTime(setup.updated_at)],
            ["JWKS URL", setup.jwks_url ? h("a", { href: setup.jwks_url }, setup.jwks_url) : null],
            ["Discovery error", setup.discovery_error],
          ]),
          setup.discovered
            ? h("details", {}, h("summary", {}, "SMART discovery results"),
              h("pre", {}, JSON.stringify(setup.discovered, null, 2)))
            : null);
    return h("section", { class: "card", "aria-label": c.name },
      h("h2", {}, `${c.name} `, h("span", { class: "muted" }, `(${c.id}, v${c.version})`)),
      dl([
        ["Auth types", c.auth_types.join(", ")],
        ["Methods", c.methods.map((m) => m.id).join(", ")],
      ]),
      setupPart);
  }));
  setView("Connectors and setups", ...cards);
}

// A list page with cursor paging: `load(cursor)` returns {rows, next}.
function pager(render, load) {
  let cursors = [null];
  const nav = h("div", { class: "actions" });
  const holder = h("div", {});
  async function go(i) {
    const { rows, next } = await load(cursors[i]);
    holder.replaceChildren(render(rows));
    cursors = cursors.slice(0, i + 1);
    if (next) cursors.push(next);
    nav.replaceChildren(
      h("button", { type: "button", class: "secondary", disabled: i === 0, onclick: () => go(i - 1).catch(showError) }, "Previous page"),
      " ",
      h("button", { type: "button", class: "secondary", disabled: !next, onclick: () => go(i + 1).catch(showError) }, "Next page"));
  }
  return { el: h("div", {}, holder, nav), start: () => go(0) };
}

async function accountsPage() {
  const p = pager(
    (rows) => table("Accounts", ["Account", "Name", "Created"],
      rows.map((a) => h("tr", {}, h("td", {}, a.id), h("td", {}, a.name || ""), h("td", {}, fmtTime(a.created_at))))),
    async (cursor) => {
      const q = new URLSearchParams({ limit: "50" });
      if (cursor) q.set("cursor", cursor);
      const r = await api("GET", `/v1/accounts?${q}`);
      return { rows: r.accounts, next: r.next_cursor };
    });
  setView("Accounts", p.el);
  await p.start();
}

async function installsPage(params) {
  const status = params.get("status") || "";
  const select = h("select", { id: "f-status", name: "status" },
    ["", "authorized", "pending_authorization", "needs_reauthorization", "error"].map((s) =>
      h("option", { value: s, selected: s === status }, s ? s.replace(/_/g, " ") : "any status")));
  const form = h("form", { onsubmit: (e) => { e.preventDefault(); location.hash = `#/installs?status=${enc(select.value)}`; } },
    h("div", { class: "row" }, h("div", {}, h("label", { for: "f-status" }, "Status"), select),
      h("div", {}, h("button", { type: "submit" }, "Filter"))));
  const p = pager(
    (rows) => table("Installs and their health",
      ["Install", "Account", "Connector", "Status", "Last refresh", "Last error", "Token expires", ""],
      rows.map((i) => h("tr", {},
        h("td", {}, i.id),
        h("td", {}, i.account),
        h("td", {}, i.connector),
        h("td", {}, statusBadge(i.status)),
        h("td", {}, fmtTime(i.last_refresh_at)),
        h("td", {}, i.last_refresh_error || i.last_error || "—"),
        h("td", {}, fmtTime(i.expires_at)),
        h("td", {}, h("a", { href: `#/run?account=${enc(i.account)}&install=${enc(i.id)}` }, "Run a method"))))),
    async (cursor) => {
      const q = new URLSearchParams({ limit: "50" });
      if (status) q.set("status", status);
      if (cursor) q.set("cursor", cursor);
      const r = await api("GET", `/v1/installs?${q}`);
      return { rows: r.installs, next: r.next_cursor };
    });
  setView("Installs", form, p.el);
  await p.start();
}

// One input per method parameter, from the parameter schema of GET /v1/connectors/{id}.
function paramField(p) {
  const id = `p-${p.name}`;
  const hints = [p.in, p.type + (p.repeated ? ", several values separated by commas" : "")];
  if (p.pattern) hints.push(`pattern ${p.pattern}`);
  if (p.minimum !== undefined) hints.push(`minimum ${p.minimum}`);
  if (p.maximum !== undefined) hints.push(`maximum ${p.maximum}`);
  let input;
  if (Array.isArray(p.enum)) {
    input = h("select", { id, name: p.name },
      h("option", { value: "" }, p.required ? "choose…" : "(none)"),
      p.enum.map((v) => h("option", { value: String(v) }, String(v))));
  } else if (p.type === "boolean") {
    input = h("select", { id, name: p.name },
      h("option", { value: "" }, "(none)"), h("option", { value: "true" }, "true"), h("option", { value: "false" }, "false"));
  } else {
    input = h("input", {
      id, name: p.name, type: (p.type === "integer" || p.type === "number") && !p.repeated ? "number" : "text",
      min: p.minimum, max: p.maximum, step: p.type === "integer" ? "1" : p.type === "number" ? "any" : undefined,
      required: p.required, spellcheck: "false", "aria-describedby": `${id}-hint`,
    });
  }
  return h("div", {},
    h("label", { for: id }, p.name + (p.required ? " (required)" : "")),
    input,
    h("p", { class: "hint", id: `${id}-hint` }, [p.description, hints.join("; ")].filter(Boolean).join(" — ")));
}

function paramValue(p, raw) {
  const one = (s) => {
    if (p.type === "integer") return Number.parseInt(s, 10);
    if (p.type === "number") return Number(s);
    if (p.type === "boolean") return s === "true";
    return s;
  };
  return p.repeated ? raw.split(",").map((s) => s.trim()).filter(Boolean).map(one) : one(raw);
}

async function runPage(params) {
  setView("Run a method", h("p", { class: "muted" }, "Loading…"));
  const { installs } = await api("GET", "/v1/installs?limit=500");
  if (!installs.length) {
    setView("Run a method", h("p", {}, "No installs yet. Create one with POST /v1/accounts/{account}/installs."));
    return;
  }
  const chosen = installs.find((i) => i.id === params.get("install") && i.account === params.get("account")) || installs[0];
  const installSel = h("select", { id: "run-install", name: "install" },
    installs.map((i) => h("option", { value: `${i.account}/${i.id}`, selected: i === chosen },
      `${i.account} / ${i.id} (${i.connector}, ${i.status.replace(/_/g, " ")})`)));
  installSel.addEventListener("change", () => {
    const [account, install] = installSel.value.split("/");
    location.hash = `#/run?account=${enc(account)}&install=${enc(install)}`;
  });
  const connector = await api("GET", `/v1/connectors/${enc(chosen.connector)}`);
  const methods = connector.methods || [];
  const wanted = methods.find((m) => m.id === params.get("method")) || methods.find((m) => m.id === "get_patient") || methods[0];
  const methodSel = h("select", { id: "run-method", name: "method" },
    methods.map((m) => h("option", { value: m.id, selected: m === wanted }, `${m.name} (${m.id})`)));
  methodSel.addEventListener("change", () => {
    location.hash = `#/run?account=${enc(chosen.account)}&install=${enc(chosen.id)}&method=${enc(methodSel.value)}`;
  });
  const method = wanted;
  const fields = (method.params || []).map(paramField);
  const bodyField = method.body
    ? h("div", {}, h("label", { for: "run-body" }, `Body: a FHIR ${method.body.resource_type} (JSON)`),
      h("textarea", { id: "run-body", name: "body", rows: "8", cols: "70", spellcheck: "false" },
        JSON.stringify({ resourceType: method.body.resource_type }, null, 2)))
    : null;
  const result = h("div", { id: "run-result", "aria-live": "polite" });
  const submit = h("button", { type: "submit" }, "Run");
  const form = h("form", {
    id: "run-form",
    onsubmit: async (e) => {
      e.preventDefault();
      const values = {};
      for (const p of method.params || []) {
        const raw = form.elements[p.name].value.trim();
        if (raw !== "") values[p.name] = paramValue(p, raw);
      }
      const payload = { params: values };
      if (method.body) {
        try { payload.body = JSON.parse($("run-body").value); } catch (_) {
          result.replaceChildren(h("p", { class: "error", role: "alert" }, "The body is not valid JSON."));
          return;
        }
      }
      submit.disabled = true;
      result.replaceChildren(h("p", { class: "muted" }, "Running…"));
      try {
        const out = await api("POST",
          `/v1/accounts/${enc(chosen.account)}/installs/${enc(chosen.id)}/methods/${enc(method.id)}`, payload);
        result.replaceChildren(
          h("h2", {}, `Result: upstream status ${out.status}, ${out.pages} page(s)`),
          summary(out.data),
          h("pre", { id: "run-json", tabindex: "0", "aria-label": "Result JSON" }, JSON.stringify(out.data, null, 2)));
      } catch (err) {
        if (err.status !== 401) result.replaceChildren(problemView(err));
      } finally {
        submit.disabled = false;
      }
    },
  },
  h("div", { class: "row" },
    h("div", {}, h("label", { for: "run-install" }, "Install"), installSel),
    h("div", {}, h("label", { for: "run-method" }, "Method"), methodSel)),
  method.description ? h("p", { class: "hint" }, method.description) : null,
  h("p", { class: "hint" }, `${method.verb} ${method.path}${method.scope ? " · scope " + method.scope : ""}`),
  h("fieldset", {}, h("legend", {}, "Parameters"), fields.length ? fields : h("p", { class: "muted" }, "This method takes no parameters.")),
  bodyField,
  h("div", { class: "actions" }, submit));
  setView("Run a method", form, result);
}

// A one-line human summary of a FHIR result: a patient's name, or a bundle's size.
function summary(data) {
  if (!data || typeof data !== "object") return null;
  if (data.resourceType === "Patient" && Array.isArray(data.name) && data.name.length) {
    const n = data.name[0];
    const text = n.text || [...(n.given || []), n.family].filter(Boolean).join(" ");
    return h("p", { id: "run-summary" }, "Patient: ", h("strong", {}, text));
  }
  if (data.resourceType === "Bundle") {
    return h("p", { id: "run-summary" }, `Bundle with ${(data.entry || []).length} entries`);
  }
  return h("p", { id: "run-summary" }, data.resourceType ? `${data.resourceType} ${data.id || ""}` : "");
}

async function auditPage(params) {
  const names = [["install", "Install"], ["account", "Account"], ["method", "Method"],
    ["outcome", "Outcome (ok, error or a status)"], ["from", "From (RFC 3339)"], ["to", "To (RFC 3339)"]];
  const form = h("form", {
    onsubmit: (e) => {
      e.preventDefault();
      const q = new URLSearchParams();
      for (const [n] of names) { const v = form.elements[n].value.trim(); if (v) q.set(n, v); }
      location.hash = `#/audit?${q}`;
    },
  }, h("div", { class: "row" }, names.map(([n, label]) => h("div", {},
    h("label", { for: `a-${n}` }, label),
    h("input", { id: `a-${n}`, name: n, type: "text", value: params.get(n) || "", spellcheck: "false" })))),
  h("div", { class: "actions" }, h("button", { type: "submit" }, "Filter")));
  const p = pager(
    (rows) => table("Audit events, oldest first",
      ["At", "Kind", "Action", "Account", "Install", "Status", "Code", "Upstream", "ms", "Request"],
      rows.map((ev) => h("tr", {},
        h("td", {}, fmtTime(ev.at)), h("td", {}, ev.kind), h("td", {}, ev.action),
        h("td", {}, ev.account_id || "—"), h("td", {}, ev.install_id || "—"), h("td", {}, String(ev.status)),
        h("td", {}, ev.code || "—"), h("td", {}, ev.upstream_status == null ? "—" : String(ev.upstream_status)),
        h("td", {}, ev.duration_ms == null ? "—" : String(ev.duration_ms)), h("td", {}, ev.request_id || "—")))),
    async (cursor) => {
      const q = new URLSearchParams({ limit: "50" });
      for (const [n] of names) { const v = params.get(n); if (v) q.set(n, v); }
      if (cursor) q.set("cursor", cursor);
      const r = await api("GET", `/v1/audit?${q}`);
      return { rows: r.events, next: r.next_cursor };
    });
  setView("Audit trail", form, p.el);
  await p.start();
}

// ---------------------------------------------------------------------------------------------
// Session and routing
// ---------------------------------------------------------------------------------------------

const pages = { connectors: connectorsPage, accounts: accountsPage, installs: installsPage, run: runPage, audit: auditPage };

function showError(err) {
  if (err && err.status === 401) return;
  $("view").append(problemView(err));
}

async function route() {
  const [path, query] = (location.hash.replace(/^#\/?/, "") || "connectors").split("?");
  const name = pages[path] ? path : "connectors";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    await pages[name](new URLSearchParams(query || ""));
  } catch (err) {
    showError(err);
  }
  const title = $("view-title");
  if (title && document.activeElement === document.body) $("main").focus();
}

function showSignIn(message) {
  $("nav").hidden = true;
  $("signout").hidden = true;
  $("who").textContent = "";
  $("view").replaceChildren();
  $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  document.title = "Sign in · Switchboard console";
  $("api_key").focus();
}

function showConsole(session) {
  $("signin").hidden = true;
  $("nav").hidden = false;
  $("signout").hidden = false;
  $("who").textContent = `Tenant ${session.tenant}`;
  route();
}

async function start() {
  $("signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("signin-error").textContent = "";
    const key = $("api_key").value.trim();
    try {
      const res = await fetch("/console/session", {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/x-www-form-urlencoded", Accept: "application/json" },
        body: new URLSearchParams({ api_key: key }),
      });
      const data = await res.json().catch(() => null);
      if (!res.ok) {
        $("signin-error").textContent = (data && data.detail) || `Sign-in failed (HTTP ${res.status})`;
        $("api_key").focus();
        return;
      }
      $("api_key").value = "";
      showConsole(data);
    } catch (err) {
      $("signin-error").textContent = "The server could not be reached.";
    }
  });
  $("signout").addEventListener("click", async () => {
    try { await api("DELETE", "/console/session"); } catch (_) { /* shown by the sign-in page */ }
    showSignIn("You are signed out.");
  });
  window.addEventListener("hashchange", () => { if ($("signin").hidden) route(); });
  try {
    const session = await api("GET", "/console/session");
    showConsole(session);
  } catch (_) {
    showSignIn("");
  }
}

start();
