// stc-client window: renders the snapshots pushed over /api/ws, edits the settings.
// Everything that comes from a certificate is put in the page as text (textContent), never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const LIGHT = {
    red: { word: "RED", symbol: "✕" },
    yellow: { word: "YELLOW", symbol: "…" },
    green: { word: "GREEN", symbol: "✓" },
    amber: { word: "AMBER", symbol: "!" },
  };

  // ---- helpers -------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function parseTime(iso) {
    // Python writes microseconds; keep milliseconds for every browser's Date parser.
    return iso ? new Date(iso.replace(/(\.\d{3})\d+/, "$1")) : null;
  }

  function timeEl(iso, withDate) {
    const t = parseTime(iso);
    if (!t || isNaN(t)) return el("span", { text: "—" });
    const opts = { hour: "2-digit", minute: "2-digit", second: "2-digit" };
    const text = withDate ? t.toLocaleString([], { dateStyle: "medium", timeStyle: "medium" }) : t.toLocaleTimeString([], opts);
    return el("time", { datetime: iso, title: t.toISOString() }, text);
  }

  function groupedFingerprint(hex) {
    return (hex.match(/.{1,4}/g) || []).join(" ");
  }

  function identityText(ident) {
    if (!ident) return "—";
    const parts = [ident.display_name];
    if (ident.organization) parts.push(`(${ident.organization})`);
    return parts.join(" ");
  }

  // ---- status --------------------------------------------------------------------

  let lastWarnings = "";
  let lastSeq = -1;

  function renderStatus(s) {
    const light = LIGHT[s.light] ? s.light : "red";
    $("light").dataset.light = light;
    $("light-word").textContent = LIGHT[light].word;
    $("lamp-symbol").textContent = LIGHT[light].symbol;
    $("light-label").textContent = s.reason_label ? `${s.label}: ${s.reason_label}` : s.label;
    $("light-reason").textContent = s.reason || "";
    $("server").replaceChildren(s.server
      ? el("span", {}, identityText(s.server), " ", el("code", { class: "fp", title: "SHA-256 " + s.server.fingerprint_sha256 }, groupedFingerprint(s.server.fingerprint_sha256.slice(0, 16))))
      : "—");
    $("me").textContent = s.me ? identityText(s.me) : "—";
    $("since").replaceChildren(timeEl(s.since, true));
    $("call-room-row").hidden = !s.call;
    $("call-srtp-row").hidden = !s.call;
    if (s.call) {
      $("call-room").textContent = s.call.room;
      $("call-srtp").textContent = s.call.srtp_profile;
    }
    $("call-media-row").hidden = !s.media;
    if (s.media) {
      const m = s.media;
      const age = m.last_packet_at ? Math.max(0, Math.round((Date.now() - Date.parse(m.last_packet_at)) / 1000)) : null;
      $("call-media").textContent = `${m.sent} packets sent, ${m.received} received, ${m.dropped} dropped` +
        (age === null ? " · no packet yet" : ` · last packet ${age} s ago`);
    }
    const alarms = (s.warnings || []).filter((w) => w.kind === "unauthenticated" || w.kind === "roster-rejected");
    const listening = (s.warnings || []).some((w) => w.kind === "listener");
    $("light-caveat").hidden = alarms.length === 0 && !listening;
    $("light-caveat").textContent = alarms.length
      ? "⚠ The tunnel is secure, but not everyone listed can be trusted: see the warning above."
      : listening ? "⚠ The tunnel is secure, but something outside the conference can hear it: see the warning above." : "";
    renderWarnings(s.warnings || []);
    renderRoster(s);
    renderHistory(s.history || []);
    document.title = `stc-client: ${LIGHT[light].word}, ${s.label}`;
  }

  function renderWarnings(warnings) {
    const key = JSON.stringify(warnings);
    if (key === lastWarnings) return; // re-inserting an alert makes screen readers repeat it
    lastWarnings = key;
    const box = $("warnings");
    box.replaceChildren();
    for (const w of warnings) {
      const loud = w.kind === "unauthenticated" || w.kind === "roster-rejected" || w.kind === "listener";
      const title = {
        "unauthenticated": "WARNING: UNAUTHENTICATED participant in this conference",
        "listener": "NOT PRIVATE: someone outside the conference can hear it",
        "roster-rejected": "WARNING: the participant list failed its security check",
        "roster-unknown": "Caution: participants unknown",
      }[w.kind] || "Warning";
      box.append(el("div", {
        class: `banner ${loud ? "danger" : "caution"}`,
        role: loud ? "alert" : "status",
        "data-kind": w.kind,
      }, el("span", { class: "banner-icon", "aria-hidden": "true" }, loud ? "⚠" : "!"),
        el("div", {}, el("p", { class: "banner-title" }, title), el("p", { class: "banner-text" }, w.message))));
    }
  }

  function renderRoster(s) {
    const body = $("roster-body");
    const open = new Set([...body.querySelectorAll("details[open]")].map((d) => d.dataset.channel));
    const rows = s.participants || [];
    if (!s.roster) {
      $("roster-summary").textContent = s.call ? "Waiting for the conference roster from the server…" : "Not in a call: no conference roster.";
    } else {
      const unauth = rows.filter((r) => !r.authenticated).length;
      let text = `Room ${s.roster.room}: ${rows.length} participant${rows.length === 1 ? "" : "s"}`;
      text += unauth ? `, ${unauth} UNAUTHENTICATED.` : ", all authenticated by certificate.";
      $("roster-summary").textContent = text;
    }
    $("roster").hidden = rows.length === 0;
    body.replaceChildren(...rows.map((r) => rosterRow(r, open.has(r.channel_id))));
  }

  let lastHistory = "";

  function renderHistory(history) {
    const key = JSON.stringify(history);
    if (key === lastHistory) return;
    lastHistory = key;
    $("history-empty").hidden = history.length > 0;
    $("history").replaceChildren(...history.map((h) => el("li", { "data-kind": h.kind },
      timeEl(h.at, false), " ", el("span", { class: "history-text" }, h.message))));
  }

  // Asterisk writes a caller id as `"Name" <number>`; quote the name once, not twice.
  function quotedCallerId(callerId) {
    const m = /^"(.*)" (<[^>]*>)$/.exec(callerId);
    return m ? `“${m[1]}” ${m[2]}` : `“${callerId}”`;
  }

  function rosterRow(r, fingerprintOpen) {
    const talking = r.talking
      ? el("span", { class: "talk on" }, el("span", { class: "dot", "aria-hidden": "true" }), "speaking")
      : el("span", { class: "talk" }, "silent");
    const joined = el("td", {}, timeEl(r.joined_at, false));
    if (!r.authenticated) {
      const claim = r.caller_id ? `claims to be ${quotedCallerId(r.caller_id)}` : "no caller id";
      return el("tr", { class: "unauth", "data-channel": r.channel_id },
        el("th", { scope: "row" }, el("span", { class: "badge danger" }, "UNAUTHENTICATED"), " ",
          el("span", { class: "claim" }, claim), el("br"), el("code", { class: "small" }, r.channel_name)),
        el("td", { colspan: 4, class: "nocert" }, "No certificate: this channel is not who it says it is until proven otherwise."),
        el("td", {}, talking), joined);
    }
    const name = el("th", { scope: "row" }, r.display_name);
    if (r.is_me) name.append(" ", el("span", { class: "badge you" }, "you"));
    const org = [r.organization, r.org_unit].filter(Boolean).join(" / ") || "—";
    const fp = el("details", { class: "fingerprint", "data-channel": r.channel_id, open: fingerprintOpen },
      el("summary", {}, el("code", {}, r.short_fingerprint), el("span", { class: "visually-hidden" }, " (show the full SHA-256 fingerprint)")),
      el("code", { class: "full" }, groupedFingerprint(r.fingerprint)));
    return el("tr", { "data-channel": r.channel_id },
      name, el("td", {}, org), el("td", {}, r.address ? el("span", { class: "addr" }, r.address) : "—"),
      el("td", { class: "issuer" }, r.issuer || "—"), el("td", {}, fp), el("td", {}, talking), joined);
  }

  // ---- live updates ------------------------------------------------------------------

  let delay = 500;

  function setLink(state, text) {
    const p = $("link-status");
    p.dataset.link = state;
    p.textContent = text;
    document.body.classList.toggle("stale", state !== "live");
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}/api/ws`);
    ws.onopen = () => { delay = 500; setLink("live", "Live: updates as they happen"); };
    ws.onmessage = (ev) => {
      let s;
      try { s = JSON.parse(ev.data); } catch (e) { return; }
      if (typeof s.seq === "number" && s.seq === lastSeq) return;
      lastSeq = s.seq;
      renderStatus(s);
    };
    ws.onclose = () => {
      setLink("lost", "Lost contact with stc-client; reconnecting… (what is shown may be out of date)");
      lastSeq = -1;
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 5000);
    };
    ws.onerror = () => ws.close();
  }

  // ---- settings ----------------------------------------------------------------------

  const form = () => $("settings-form");
  const fieldId = (name) => name.replace(".", "-");
  let saved = null;

  function showKind(kind) {
    $("pem-fields").hidden = kind !== "pem";
    $("pkcs12-fields").hidden = kind !== "pkcs12";
  }

  function fillForm(settings) {
    saved = settings;
    const f = settings;
    $("server-host").value = f.server.host;
    $("server-port").value = f.server.port;
    $("server-name").value = f.server.name || "";
    $("identity-cert").value = f.identity.cert;
    $("identity-key").value = f.identity.key;
    $("identity-pkcs12").value = f.identity.pkcs12 || "";
    const pass = $("identity-pkcs12_passphrase");
    pass.value = "";
    pass.placeholder = f.identity.pkcs12_passphrase_saved ? "saved (leave empty to keep it)" : "";
    $("identity-ca_bundle").value = f.identity.ca_bundle;
    $("sip-listen_port").value = f.sip.listen_port;
    $("kind-pkcs12").disabled = !f.pkcs12_supported;
    const kind = f.identity.kind === "pkcs12" ? "pkcs12" : "pem";
    $(`kind-${kind}`).checked = true;
    showKind(kind);
  }

  function clearErrors() {
    for (const p of form().querySelectorAll(".field-error")) { p.hidden = true; p.textContent = ""; }
    for (const i of form().querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
    $("settings-errors").replaceChildren();
    $("settings-result").textContent = "";
  }

  function showErrors(errors, saved, prefix = "", box = "settings-errors") {
    const list = el("ul");
    let first = null;
    for (const e of errors) {
      const p = $(`${prefix}${fieldId(e.field)}-error`);
      const input = $(prefix + fieldId(e.field));
      if (p) { p.textContent = e.message; p.hidden = false; }
      if (input) { input.setAttribute("aria-invalid", "true"); first = first || input; }
      list.append(el("li", {}, e.message));
    }
    const head = saved ? "Saved, but not applied:" : `Nothing was saved: ${errors.length} problem${errors.length === 1 ? "" : "s"}.`;
    $(box).replaceChildren(el("p", { class: "form-errors-title" }, head), list);
    if (first) first.focus();
  }

  function readForm() {
    const kind = form().querySelector('input[name="identity.kind"]:checked').value;
    return {
      server: { host: $("server-host").value, port: $("server-port").value, name: $("server-name").value },
      identity: {
        kind,
        cert: $("identity-cert").value,
        key: $("identity-key").value,
        pkcs12: $("identity-pkcs12").value,
        pkcs12_passphrase: $("identity-pkcs12_passphrase").value || null,
        ca_bundle: $("identity-ca_bundle").value,
      },
      sip: { listen_port: $("sip-listen_port").value },
    };
  }

  async function loadSettings() {
    try {
      const res = await fetch("/api/settings", { cache: "no-store" });
      const body = await res.json();
      if (!body.ok) { showErrors(body.errors, false); return; }
      fillForm(body.settings);
      $("config-path").textContent = `Saved to ${body.config_path}. Relative paths are relative to its folder.`;
      if (body.first_start) showFirstStart(body);
    } catch (e) {
      $("settings-result").textContent = "Could not read the settings from stc-client.";
    }
  }

  async function submit(ev) {
    ev.preventDefault();
    clearErrors();
    const button = $("settings-save");
    button.disabled = true;
    $("settings-result").textContent = "Checking…";
    try {
      const res = await fetch("/api/settings", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(readForm()),
      });
      const body = await res.json();
      if (body.ok) {
        fillForm(body.settings);
        $("first-start").hidden = true; // set up through the full form instead: a settings file exists now
        $("settings-result").textContent = "Saved. stc-client is reconnecting with the new settings.";
      } else {
        $("settings-result").textContent = "";
        showErrors(body.errors || [{ field: "form", message: `stc-client answered ${res.status}` }], body.saved);
      }
    } catch (e) {
      $("settings-result").textContent = "";
      showErrors([{ field: "form", message: "stc-client did not answer; nothing was changed." }], false);
    } finally {
      button.disabled = false;
    }
  }

  // ---- first start: no settings file yet ---------------------------------------------

  const setupForm = () => $("setup-form");

  function showFirstStart(body) {
    const f = body.settings;
    $("setup-server-host").value = "";
    $("setup-server-port").value = f.server.port;
    $("setup-sip-listen_port").value = f.sip.listen_port;
    const folder = body.config_path.replace(/[\\/][^\\/]*$/, "");
    $("setup-folder").textContent = `They are kept in ${folder}, readable only by you.`;
    $("first-start").hidden = false;
    $("setup-identity-pkcs12").focus();
  }

  function clearSetupErrors() {
    for (const p of setupForm().querySelectorAll(".field-error")) { p.hidden = true; p.textContent = ""; }
    for (const i of setupForm().querySelectorAll("[aria-invalid]")) i.removeAttribute("aria-invalid");
    $("setup-errors").replaceChildren();
    $("setup-result").textContent = "";
  }

  // A chosen file as JSON can carry it (settings are only ever sent as application/json).
  async function fileUpload(input) {
    const file = input.files && input.files[0];
    if (!file) return null;
    const bytes = new Uint8Array(await file.arrayBuffer());
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return { name: file.name, data: btoa(binary) };
  }

  async function submitSetup(ev) {
    ev.preventDefault();
    clearSetupErrors();
    const button = $("setup-save");
    button.disabled = true;
    $("setup-result").textContent = "Checking…";
    try {
      const form = {
        server: { host: $("setup-server-host").value, port: $("setup-server-port").value, name: $("setup-server-name").value },
        identity: {
          pkcs12_file: await fileUpload($("setup-identity-pkcs12")),
          pkcs12_passphrase: $("setup-identity-pkcs12_passphrase").value,
          ca_bundle_file: await fileUpload($("setup-identity-ca_bundle")),
        },
        sip: { listen_port: $("setup-sip-listen_port").value },
      };
      const res = await fetch("/api/first-start", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(form),
      });
      const body = await res.json();
      if (body.ok) {
        setupForm().reset();
        $("first-start").hidden = true;
        fillForm(body.settings);
        $("settings-result").textContent = "Set up. stc-client is connecting to the server.";
      } else {
        $("setup-result").textContent = "";
        showErrors(body.errors || [{ field: "form", message: `stc-client answered ${res.status}` }], body.saved, "setup-", "setup-errors");
      }
    } catch (e) {
      $("setup-result").textContent = "";
      showErrors([{ field: "form", message: "stc-client did not answer; nothing was changed." }], false, "setup-", "setup-errors");
    } finally {
      button.disabled = false;
    }
  }

  // The address stc-client printed carries the window's secret; the server has put it in a
  // cookie by now, so take it out of the address bar (and so out of history and bookmarks).
  function forgetTokenInAddress() {
    const url = new URL(location.href);
    if (!url.searchParams.has("token")) return;
    url.searchParams.delete("token");
    history.replaceState(history.state, "", url.pathname + url.search + url.hash);
  }

  forgetTokenInAddress();
  document.addEventListener("DOMContentLoaded", () => {
    form().addEventListener("submit", submit);
    setupForm().addEventListener("submit", submitSetup);
    for (const r of form().querySelectorAll('input[name="identity.kind"]')) r.addEventListener("change", () => showKind(r.value));
    $("settings-reset").addEventListener("click", () => { clearErrors(); if (saved) fillForm(saved); });
    loadSettings();
    connect();
  });
})();
