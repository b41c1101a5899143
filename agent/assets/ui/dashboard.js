// edgeroute dashboard. Reads GET /v1/dashboard every few seconds and draws it; the "try a
// query" box posts to /v1/route (scores only) and /v1/chat/completions (an answer). Every
// value reaches the page through textContent or SVG attributes, never as HTML, so an
// expert name or a query cannot inject markup. Same-origin fetches only: the daemon
// refuses state-changing requests from other origins (agent/http_security.py).
"use strict";

(() => {
  const TOKEN_KEY = "edgeroute.api_token";
  const REFRESH_MS = 3000;
  const COLORS = ["#2f6fde", "#e67e22", "#27ae60", "#8e44ad", "#c0392b", "#16a085",
                  "#d4ac0d", "#7f8c8d"];
  const $ = (id) => document.getElementById(id);
  const colors = new Map();
  let timer = null;

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  // -- formatting -----------------------------------------------------------------------
  const usd = (x) => (x === null || x === undefined) ? "–"
    : "$" + (x === 0 ? "0" : x >= 1 ? x.toFixed(2) : x >= 0.01 ? x.toFixed(4) : x.toPrecision(3));
  const pct = (x) => (x === null || x === undefined) ? "–" : (100 * x).toFixed(1) + "%";
  const prob = (x) => (x === null || x === undefined) ? "–" : x.toFixed(3);
  const secs = (x) => (x === null || x === undefined) ? "–"
    : x < 1 ? (1000 * x).toFixed(x < 0.01 ? 2 : 0) + " ms" : x.toFixed(2) + " s";
  const clock = (t) => new Date(t * 1000).toLocaleTimeString();

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else if (k === "style") node.style.cssText = v;  // CSSOM: allowed by the page's CSP
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) {
      node.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return node;
  }
  const td = (text, cls) => el("td", {text: String(text), class: cls || ""});
  const num = (text) => td(text, "num");
  function fill(tbody, rows) { tbody.replaceChildren(...rows); }
  function color(name) {
    if (!colors.has(name)) colors.set(name, COLORS[colors.size % COLORS.length]);
    return colors.get(name);
  }

  // -- the API ----------------------------------------------------------------------------
  function headers(json) {
    const h = {};
    const token = localStorage.getItem(TOKEN_KEY);
    if (token) h["Authorization"] = "Bearer " + token;
    if (json) h["Content-Type"] = "application/json";
    return h;
  }

  async function api(path, body) {
    const init = body === undefined ? {headers: headers(false)}
      : {method: "POST", headers: headers(true), body: JSON.stringify(body)};
    const r = await fetch(path, {...init, cache: "no-store", credentials: "same-origin"});
    const data = await r.json().catch(() => null);
    if (r.status === 401) {
      $("token-box").hidden = false;
      throw new ApiError(401, "this daemon needs its API token");
    }
    if (!r.ok) {
      const msg = data && data.error ? data.error.message : r.statusText;
      throw new ApiError(r.status, `${path}: HTTP ${r.status}: ${msg}`);
    }
    return data;
  }

  // -- panels -----------------------------------------------------------------------------
  function drawExperts(d) {
    const r = d.router;
    $("router-line").textContent = `router: ${r.mode}` +
      (r.encoder ? ` (${r.encoder}, ${r.precision || ""})` : "") +
      (r.note ? ` — ${r.note}` : "") +
      ` · default expert ${d.default_expert} · fallback ${d.fallback_expert}`;
    fill($("experts").tBodies[0], d.experts.map((e) => {
      const profile = el("td", {}, `${e.profile || "–"} (${e.profile_source || "–"})`,
        e.profile_hint ? el("span", {class: "hint", text: e.profile_hint}) : null);
      const acc = el("td", {class: "accuracy"}, ...(e.accuracy
        ? Object.entries(e.accuracy).map(([f, p]) => el("span", {class: "chip", text: `${f} ${prob(p)}`}))
        : [el("span", {class: "muted", text: "not predicted"})]));
      const share = el("td", {class: "num"},
        el("span", {class: "bar", style: `width:${Math.round(60 * e.recent_share)}px;background:${color(e.name)}`}),
        pct(e.recent_share));
      const state = e.breaker || "none";
      return el("tr", {"data-expert": e.name},
        el("td", {}, el("i", {class: "swatch", style: `background:${color(e.name)}`}), e.name),
        td(e.kind), el("td", {text: e.model.split("/").pop(), title: e.model}),
        num(`${e.input_usd_per_mtok} / ${e.output_usd_per_mtok}`),
        profile, acc,
        td(e.breaker ? state + (e.available ? "" : " (skipped)") : "–", `state-${state}`),
        share, num(usd(e.expected_cost_usd)),
        num(e.kind === "cloud" ? (e.budget_left_usd === null ? "uncapped" : usd(e.budget_left_usd)) : "–"));
    }));
  }

  function meter(spent, cap) {
    const frac = cap > 0 ? Math.min(spent / cap, 1) : 1;
    const bar = el("div", {class: "meter" + (frac >= 1 ? " full" : "")},
      el("div", {style: `width:${(100 * frac).toFixed(1)}%`}));
    return el("td", {}, bar);
  }

  function drawSpend(s) {
    const where = s.ledger === "fleet" ? "fleet ledger (this device's rows)" : "this device's ledger";
    $("spend-totals").textContent = s.error ? `spend unavailable: ${s.error}`
      : `today ${s.day}: ${usd(s.total_day_usd)} · month ${s.month}: ${usd(s.total_month_usd)}` +
        ` · open reservations: ${s.open_reservations} · ${where}`;
    fill($("caps").tBodies[0], s.caps.length ? s.caps.map((c) => el("tr", {},
      td(c.label), num(usd(c.spent_usd)), num(usd(c.cap_usd)),
      c.spent_usd === null ? td("fleet-wide", "muted") : meter(c.spent_usd, c.cap_usd),
      num(usd(c.left_usd)))) : [el("tr", {}, el("td", {colspan: "5", class: "muted", text: "no caps set (budget.*)"}))]);
    const rows = Object.entries(s.experts);
    fill($("spend-experts").tBodies[0], rows.length ? rows.map(([name, e]) => el("tr", {"data-expert": name},
      td(name), num(usd(e.day_usd)), num(usd(e.month_usd)), num(e.settled_calls),
      num(e.open_reservations))) : [el("tr", {}, el("td", {colspan: "5", class: "muted", text: "no cloud expert"}))]);
    const fleet = $("fleet");
    fleet.hidden = !s.fleet;
    if (s.fleet) {
      const f = s.fleet;
      const names = new Set([...Object.keys(f.lease_usd), ...Object.keys(f.fleet_left_usd), ...Object.keys(f.leased_usd)]);
      fleet.replaceChildren(
        el("p", {text: `fleet: device ${f.device_id || "?"} · database ${f.online ? "online" : "OFFLINE"}` +
                       ` · unsynced rows ${f.unsynced_rows ?? "–"}`}),
        el("table", {}, el("thead", {}, el("tr", {}, el("th", {text: "expert"}),
            el("th", {text: "fleet budget left"}), el("th", {text: "lease unspent"}), el("th", {text: "leased"}))),
          el("tbody", {}, ...[...names].map((n) => el("tr", {}, td(n), num(usd(f.fleet_left_usd[n])),
            num(usd(f.lease_usd[n])), num(usd(f.leased_usd[n])))))));
    }
  }

  function drawChart(t, experts) {
    const NS = "http://www.w3.org/2000/svg";
    const W = 600, H = 150, pad = 18;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("preserveAspectRatio", "none");
    const totals = t.buckets.map((b) => Object.values(b.experts).reduce((a, x) => a + x, 0) + b.route_calls);
    const top = Math.max(1, ...totals);
    const bw = (W - pad) / t.buckets.length;
    const rect = (x, y, w, h, fill, title) => {
      const r = document.createElementNS(NS, "rect");
      for (const [k, v] of Object.entries({x, y, width: w, height: h, fill})) r.setAttribute(k, v);
      const tt = document.createElementNS(NS, "title");
      tt.textContent = title;
      r.append(tt);
      svg.append(r);
    };
    t.buckets.forEach((b, i) => {
      let y = H - pad;
      const x = pad + i * bw + 1;
      for (const name of experts) {
        const n = b.experts[name] || 0;
        if (!n) continue;
        const h = (H - 2 * pad) * n / top;
        y -= h;
        rect(x, y, bw - 2, h, color(name), `${clock(b.start)} ${name}: ${n}`);
      }
      if (b.route_calls) {
        const h = (H - 2 * pad) * b.route_calls / top;
        y -= h;
        rect(x, y, bw - 2, h, "#c8d0da", `${clock(b.start)} route-only: ${b.route_calls}`);
      }
    });
    const label = document.createElementNS(NS, "text");
    label.setAttribute("x", "2"); label.setAttribute("y", "12");
    label.setAttribute("font-size", "11"); label.setAttribute("fill", "#65707d");
    label.textContent = `max ${top} per ${t.bucket_s}s`;
    svg.append(label);
    $("traffic-chart").replaceChildren(svg);
    $("traffic-legend").replaceChildren(
      ...experts.map((n) => el("span", {}, el("i", {style: `background:${color(n)}`}), n)),
      el("span", {}, el("i", {style: "background:#c8d0da"}), "route-only"));
  }

  function drawTraffic(t, experts) {
    drawChart(t, experts);
    const kv = (o) => Object.keys(o).length ? Object.entries(o).map(([k, v]) => `${k} ${v}`).join(", ") : "none";
    const items = [
      ["decisions", kv(t.decisions)], ["route-only calls", String(t.route_calls)],
      ["answered", kv(t.requests)],
      ["fallbacks", t.fallbacks.length ? t.fallbacks.map((f) => `${f.from_expert} → ${f.to_expert} ${f.count}`).join(", ") : "none"],
      ["refusals", kv(t.refusals)], ["cascade", kv(t.cascade)],
    ];
    $("counters").replaceChildren(...items.flatMap(([k, v]) => [el("dt", {text: k}), el("dd", {text: v, "data-counter": k})]));
    const lat = (name, l) => el("tr", {}, td(name), num(l.count), num(secs(l.mean_s)), num(secs(l.p50_s)), num(secs(l.p95_s)));
    fill($("latency").tBodies[0], [lat("router", t.router_latency),
      ...Object.entries(t.request_latency).map(([n, l]) => lat(`answer: ${n}`, l))]);
  }

  function drawDecisions(d) {
    const show = d.show_prompts;
    $("prompts-note").textContent = show ? "query text shown (server.dashboard_prompts is on)"
      : "no query text is kept (turn on server.dashboard_prompts to show it)";
    for (const c of document.querySelectorAll(".query-col")) c.classList.toggle("off", !show);
    fill($("decisions").tBodies[0], d.decisions.slice().reverse().map((r) => {
      const who = r.answered_by && r.answered_by !== r.expert ? `${r.expert} → ${r.answered_by}` : (r.expert || "refused");
      const cells = [td(clock(r.at)), td(r.served ? (r.auto ? "chat" : "chat (named)") : "route"),
        td(who), td(r.reason, "reason"), num(prob(r.p_correct)), num(usd(r.expected_cost_usd)),
        num(usd(r.cost_usd)), num(secs(r.latency_s))];
      if (show) cells.push(td(r.query || "", "query"));
      return el("tr", {"data-completion-id": r.completion_id}, ...cells);
    }));
  }

  // -- refresh loop -----------------------------------------------------------------------
  async function refresh() {
    clearTimeout(timer);
    try {
      const d = await api("/v1/dashboard?decisions=25");
      $("error").hidden = true;
      $("token-box").hidden = true;
      $("forget-token").hidden = !localStorage.getItem(TOKEN_KEY);
      drawExperts(d);
      drawSpend(d.spend);
      drawTraffic(d.traffic, d.experts.map((e) => e.name));
      drawDecisions(d);
      $("status").textContent = `up ${Math.round(d.uptime_s)} s · updated ${clock(d.generated_at)}`;
      document.body.dataset.loaded = String(d.generated_at);
    } catch (err) {
      $("status").textContent = "not updated";
      if (!(err instanceof ApiError && err.status === 401)) {
        $("error").textContent = String(err.message || err);
        $("error").hidden = false;
      }
    }
    if (!$("pause").checked) timer = setTimeout(refresh, REFRESH_MS);
  }

  // -- try a query ------------------------------------------------------------------------
  function request() {
    const text = $("try-text").value.trim();
    if (!text) throw new ApiError(400, "type a query first");
    return {model: "auto", messages: [{role: "user", content: text}],
            max_tokens: Number($("try-max").value) || 32};
  }

  function drawRouting(routing) {
    $("try-decision").className = "";
    $("try-decision").textContent = `→ ${routing.expert}: ${routing.reason}`;
    const table = $("try-scores");
    table.hidden = false;
    fill(table.tBodies[0], Object.entries(routing.experts).map(([name, a]) =>
      el("tr", {class: name === routing.expert ? "chosen" : "", "data-expert": name},
        td(name), num(prob(a.p_correct)), num(usd(a.expected_cost_usd)),
        num(a.expected_output_tokens), num(usd(a.worst_case_usd)),
        num(a.utility === null ? "–" : a.utility.toFixed(4)),
        td(a.feasible ? "yes" : `no: ${a.rejected}`))));
  }

  async function tryIt(answer) {
    const buttons = [$("try-route"), $("try-answer")];
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const body = request();
      if (!answer) {
        $("try-answer-box").hidden = true;
        drawRouting((await api("/v1/route", body)).routing);
      } else {
        $("try-answer-text").textContent = "…";
        $("try-answer-box").hidden = false;
        const started = performance.now();
        const r = await api("/v1/chat/completions", body);
        drawRouting(r.routing);
        const took = (performance.now() - started) / 1000;
        $("try-answer-by").textContent = `answered by ${r.expert} in ${secs(took)} · ` +
          `${r.usage.prompt_tokens} + ${r.usage.completion_tokens} tokens · ${r.id}`;
        $("try-answer-text").textContent = r.choices[0].message.content || "";
        refresh();
      }
    } catch (err) {
      $("try-decision").textContent = String(err.message || err);
    } finally {
      buttons.forEach((b) => { b.disabled = false; });
    }
  }

  // -- wiring -----------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("token-save").addEventListener("click", () => {
      const token = $("token-input").value.trim();
      if (token) localStorage.setItem(TOKEN_KEY, token);
      $("token-input").value = "";
      refresh();
    });
    $("token-input").addEventListener("keydown", (e) => { if (e.key === "Enter") $("token-save").click(); });
    $("forget-token").addEventListener("click", () => { localStorage.removeItem(TOKEN_KEY); refresh(); });
    $("pause").addEventListener("change", () => { if (!$("pause").checked) refresh(); else clearTimeout(timer); });
    $("try-route").addEventListener("click", () => tryIt(false));
    $("try-answer").addEventListener("click", () => tryIt(true));
    document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
    refresh();
  });
})();
