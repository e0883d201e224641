// Parley dashboard: polls the admin API once a second and draws the node's
// figures on <canvas>; on a node of a cluster it also shows the cluster's
// status, read every few seconds. No library: a line chart is a few dozen
// lines, and the page must work on a machine with no internet access.
"use strict";

(function () {
  const POLL_MS = 1000;
  // A cluster's status asks every node and JetStream (and waits half a
  // second for the nodes' answers): read it less often than the node's.
  const CLUSTER_POLL_MS = 5000;
  const WINDOW_S = 300; // the charts show the last five minutes
  const MIN_SPAN_S = 10;

  // The admin token, when the listener needs one, comes in the page's URL
  // fragment (#token=...), which the browser never sends to the server
  // (so it stays out of logs), and goes out as a bearer token on every
  // API call.
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  const headers = token ? { Authorization: "Bearer " + token } : {};

  // ---- formatting -------------------------------------------------------

  function fmtCount(v) {
    if (v == null || isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(a >= 1e10 ? 0 : 1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + "k";
    if (Number.isInteger(v)) return String(v);
    return v.toFixed(a >= 100 ? 0 : 1);
  }
  function fmtRate(v) { return fmtCount(v); }
  function fmtSeconds(v) {
    if (v == null || isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a < 1e-3) return (v * 1e6).toFixed(0) + "µs";
    if (a < 1) return (v * 1e3).toFixed(a < 0.01 ? 2 : a < 0.1 ? 1 : 0) + "ms";
    if (a < 120) return v.toFixed(a < 10 ? 2 : 1) + "s";
    return (v / 60).toFixed(0) + "m";
  }
  function fmtUptime(s) {
    if (s == null || isNaN(s)) return "–";
    if (s < 60) return Math.floor(s) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s / 60) % 60).padStart(2, "0");
    return Math.floor(s / 86400) + "d" + Math.floor(s / 3600) % 24 + "h";
  }
  function fmtTime(t) {
    const d = new Date(t);
    return isNaN(d) ? "" : d.toLocaleTimeString();
  }
  function text(el, s) { if (el && el.textContent !== s) el.textContent = s; }

  // ---- charts -----------------------------------------------------------

  const charts = [
    { id: "connections", title: "Connections", fmt: fmtCount, series: [
      { label: "connections", color: "#1565c0", get: s => s.connections },
      { label: "sessions", color: "#26a69a", get: s => s.sessions },
    ] },
    { id: "messages", title: "Messages / s", fmt: fmtRate, series: [
      { label: "in", color: "#1565c0", get: s => s.in_rate },
      { label: "out", color: "#ef6c00", get: s => s.out_rate },
    ] },
    { id: "send_to_deliver", title: "Delivery latency (send → deliver)", fmt: fmtSeconds, series: [
      { label: "p50", color: "#2e7d32", get: s => s.send_to_deliver.count ? s.send_to_deliver.p50 : null },
      { label: "p99", color: "#c62828", get: s => s.send_to_deliver.count ? s.send_to_deliver.p99 : null },
    ] },
    { id: "deliver_to_ack", title: "Ack latency (deliver → ack)", fmt: fmtSeconds, series: [
      { label: "p50", color: "#2e7d32", get: s => s.deliver_to_ack.count ? s.deliver_to_ack.p50 : null },
      { label: "p99", color: "#c62828", get: s => s.deliver_to_ack.count ? s.deliver_to_ack.p99 : null },
    ] },
    { id: "offline_queues", title: "Offline queues (items)", fmt: fmtCount, series: [
      { label: "total", color: "#6a1b9a", get: s => s.queue_depth_total },
      { label: "largest user", color: "#ad1457", get: s => s.queue_depth_max },
    ] },
    { id: "mailboxes", title: "Mailboxes & worker backlog", fmt: fmtCount, series: [
      { label: "longest", color: "#ef6c00", get: s => s.mailbox_max },
      { label: "all", color: "#8d6e63", get: s => s.mailbox_total },
      { label: "backlog", color: "#1565c0", get: s => s.backlog },
    ] },
    { id: "loop_lag", title: "Event-loop lag", fmt: fmtSeconds, series: [
      { label: "lag", color: "#00838f", get: s => s.loop_lag_seconds },
    ] },
    { id: "alerts", title: "Alerts firing", fmt: fmtCount, step: true, series: [
      { label: "firing", color: "#c62828", get: s => s.alerts_firing },
    ] },
  ];

  for (const c of charts) {
    c.fig = document.querySelector(`[data-chart="${c.id}"]`);
    c.canvas = c.fig.querySelector("canvas");
    const cap = c.fig.querySelector("figcaption");
    cap.innerHTML = "";
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = c.title;
    cap.appendChild(title);
    const legend = document.createElement("div");
    legend.className = "legend";
    cap.appendChild(legend);
    for (const s of c.series) {
      const el = document.createElement("span");
      el.className = "series";
      el.innerHTML = `<span class="swatch" style="background:${s.color}"></span>${s.label} <span class="v">–</span>`;
      s.valueEl = el.querySelector(".v");
      s.valueEl.dataset.series = c.id + "." + s.label;
      legend.appendChild(el);
    }
  }

  // niceMax rounds a chart's top up to 1, 2 or 5 times a power of ten, so
  // the grid lines fall on round numbers.
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function drawChart(c, hist) {
    const cv = c.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(cv.clientWidth * dpr));
    const h = Math.max(1, Math.round(cv.clientHeight * dpr));
    if (cv.width !== w || cv.height !== h) { cv.width = w; cv.height = h; }
    const g = cv.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    const W = cv.clientWidth, H = cv.clientHeight;
    g.clearRect(0, 0, W, H);

    const padL = 52, padR = 8, padT = 6, padB = 18;
    const pw = W - padL - padR, ph = H - padT - padB;
    const end = hist.length ? Date.parse(hist[hist.length - 1].time) : Date.now();
    // The time axis spans the data, up to WINDOW_S: a page opened on a
    // node that just started shows its first seconds across the chart
    // rather than as a sliver at the right edge.
    const first = hist.length ? Date.parse(hist[0].time) : end;
    const spanS = Math.min(WINDOW_S, Math.max(MIN_SPAN_S, (end - first) / 1000));
    const start = end - spanS * 1000;

    let top = 0;
    for (const s of hist) {
      if (Date.parse(s.time) < start) continue;
      for (const ser of c.series) {
        const v = ser.get(s);
        if (v != null && v > top) top = v;
      }
    }
    top = niceMax(top * 1.05);

    // grid and labels
    g.font = "11px system-ui, sans-serif";
    g.textBaseline = "middle";
    g.textAlign = "right";
    for (let i = 0; i <= 4; i++) {
      const y = padT + ph - (ph * i) / 4;
      g.strokeStyle = i === 0 ? "#c5cad3" : "#eceef2";
      g.lineWidth = 1;
      g.beginPath(); g.moveTo(padL, Math.round(y) + 0.5); g.lineTo(padL + pw, Math.round(y) + 0.5); g.stroke();
      g.fillStyle = "#6b7385";
      g.fillText(c.fmt((top * i) / 4), padL - 6, y);
    }
    g.textAlign = "center";
    g.textBaseline = "alphabetic";
    const step = [1, 2, 5, 10, 15, 30, 60, 120].find(st => spanS / st <= 6) || 60;
    for (let ago = 0; ago <= spanS + 1e-9; ago += step) {
      const x = padL + pw - (pw * ago) / spanS;
      const label = ago === 0 ? "now" : ago % 60 === 0 ? `-${ago / 60}m` : `-${ago}s`;
      g.fillStyle = "#6b7385";
      g.fillText(label, Math.min(Math.max(x, padL + 12), padL + pw - 12), H - 4);
    }

    // series
    const xOf = t => padL + (pw * (t - start)) / (spanS * 1000);
    const yOf = v => padT + ph - (ph * v) / top;
    let drawn = 0;
    for (const ser of c.series) {
      g.strokeStyle = ser.color;
      g.lineWidth = 1.75;
      g.lineJoin = "round";
      g.beginPath();
      let pen = false, prevY = 0, n = 0;
      for (const s of hist) {
        const t = Date.parse(s.time);
        if (t < start) continue;
        const v = ser.get(s);
        if (v == null) { pen = false; continue; } // a gap: nothing was measured
        const x = xOf(t), y = yOf(v);
        if (!pen) g.moveTo(x, y);
        else if (c.step) { g.lineTo(x, prevY); g.lineTo(x, y); }
        else g.lineTo(x, y);
        pen = true; prevY = y; n++;
      }
      g.stroke();
      drawn = Math.max(drawn, n);
    }
    cv.dataset.points = String(drawn);

    // legend values: the latest sample
    const last = hist[hist.length - 1];
    for (const ser of c.series) {
      const v = last ? ser.get(last) : null;
      text(ser.valueEl, v == null ? "–" : c.fmt(v));
      ser.valueEl.dataset.value = v == null ? "" : String(v);
    }
  }

  // ---- tables and tiles -------------------------------------------------

  function setTiles(s) {
    const fmts = { in_rate: fmtRate, out_rate: fmtRate, loop_lag_seconds: fmtSeconds };
    for (const el of document.querySelectorAll("[data-stat]")) {
      const k = el.dataset.stat;
      const v = s[k];
      text(el, (fmts[k] || fmtCount)(v));
      el.dataset.value = String(v);
    }
    document.getElementById("tile-alerts").classList.toggle("alerting", s.alerts_firing > 0);
    text(document.getElementById("clock"), fmtTime(s.time));
  }

  function cell(tr, v, cls) {
    const td = document.createElement("td");
    td.textContent = v;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }

  function fmtAlertValue(a, v) { return a.name === "loop_lag_high" ? fmtSeconds(v) : fmtCount(v); }

  function setAlerts(r) {
    const body = document.querySelector("#alerts tbody");
    const rows = (r.firing || []).concat((r.recent || []).slice(0, 10));
    body.replaceChildren();
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      cell(tr, "No alerts.");
      tr.firstChild.colSpan = 8;
      body.appendChild(tr);
      return;
    }
    for (const a of rows) {
      const tr = document.createElement("tr");
      tr.className = a.state;
      tr.dataset.alert = a.name;
      cell(tr, a.state);
      cell(tr, a.name);
      cell(tr, a.subject || "");
      cell(tr, fmtAlertValue(a, a.value), "num");
      cell(tr, fmtAlertValue(a, a.peak), "num");
      cell(tr, fmtAlertValue(a, a.threshold), "num");
      cell(tr, fmtTime(a.since));
      cell(tr, a.until ? fmtTime(a.until) : "");
      body.appendChild(tr);
    }
  }

  function setSessions(r) {
    const body = document.querySelector("#sessions tbody");
    body.replaceChildren();
    if (!r.sessions || !r.sessions.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      cell(tr, "No sessions.");
      tr.firstChild.colSpan = 7;
      body.appendChild(tr);
      return;
    }
    for (const s of r.sessions) {
      const tr = document.createElement("tr");
      cell(tr, s.user);
      cell(tr, s.conn);
      cell(tr, fmtCount(s.mailbox), "num");
      cell(tr, fmtCount(s.inflight), "num");
      cell(tr, fmtCount(s.queued), "num");
      cell(tr, fmtRate(s.in_rate), "num");
      cell(tr, fmtRate(s.out_rate), "num");
      body.appendChild(tr);
    }
  }

  // setCluster draws GET /admin/cluster: the members with their
  // connections and queues, the streams with their leaders and replicas,
  // and the problems, which also mark the panel.
  function setCluster(c) {
    const panel = document.getElementById("cluster");
    panel.hidden = false;
    text(document.getElementById("cluster-seen"), "as " + c.node + " sees it");
    setProblems(c.problems || []);

    const members = document.querySelector("#cluster-members tbody");
    members.replaceChildren();
    for (const m of c.members || []) {
      const tr = document.createElement("tr");
      tr.dataset.node = m.node;
      cell(tr, m.node === c.node ? m.node + " (this node)" : m.node);
      cell(tr, m.version);
      cell(tr, fmtCount(m.connections), "num");
      cell(tr, fmtCount(m.sessions), "num");
      cell(tr, fmtCount(m.queue_depth_total), "num");
      cell(tr, fmtUptime(m.uptime_s), "num");
      members.appendChild(tr);
    }

    const streams = document.querySelector("#cluster-streams tbody");
    streams.replaceChildren();
    for (const st of c.streams || []) {
      const tr = document.createElement("tr");
      tr.dataset.stream = st.name;
      cell(tr, st.name);
      cell(tr, fmtCount(st.messages), "num");
      cell(tr, st.leader || "none", st.leader ? "" : "bad");
      const td = document.createElement("td");
      for (const r of st.replicas || []) {
        const ok = r.current && !r.offline;
        const span = document.createElement("span");
        span.className = ok ? "replica" : "replica bad";
        span.textContent = r.node + (r.offline ? " offline" : ok ? " ✓" : " behind " + fmtCount(r.lag));
        if (td.childNodes.length) td.appendChild(document.createTextNode(", "));
        td.appendChild(span);
      }
      if (!td.childNodes.length) td.textContent = "–";
      tr.appendChild(td);
      streams.appendChild(tr);
    }
  }

  function setProblems(problems) {
    const ul = document.getElementById("cluster-problems");
    ul.replaceChildren();
    for (const p of problems) {
      const li = document.createElement("li");
      li.className = "problem";
      li.textContent = p;
      ul.appendChild(li);
    }
    if (!problems.length) {
      const li = document.createElement("li");
      li.className = "ok";
      li.textContent = "No problems.";
      ul.appendChild(li);
    }
    document.getElementById("cluster").classList.toggle("alerting", problems.length > 0);
  }

  // ---- polling ----------------------------------------------------------

  const hist = [];
  // state is read by the dashboard's browser test, and handy in a console.
  const state = {
    updates: 0, errors: 0, last: null, history: hist,
    // cluster: alone once a node answered that it runs alone (then the
    // panel stays hidden and is not asked for again).
    cluster: { updates: 0, errors: 0, alone: false, last: null },
  };
  window.parleyDashboard = state;

  function push(s) {
    if (hist.length && hist[hist.length - 1].time === s.time) return false;
    hist.push(s);
    const cutoff = Date.parse(s.time) - WINDOW_S * 1000;
    while (hist.length && Date.parse(hist[0].time) < cutoff) hist.shift();
    return true;
  }

  async function get(path) {
    const r = await fetch(path, { headers, cache: "no-store" });
    if (r.status === 401) throw new Error("the admin listener needs its token: open this page as /#token=TOKEN");
    if (!r.ok) {
      // Parley's errors are {"error":{"code":..,"message":..}}: the
      // message says what to do.
      const body = await r.json().catch(() => null);
      const e = new Error(`${path}: ` + (body && body.error ? body.error.message : `HTTP ${r.status}`));
      e.status = r.status;
      throw e;
    }
    return r.json();
  }

  function setStatus(ok, msg) {
    const el = document.getElementById("status");
    el.className = "status " + (ok ? "ok" : "bad");
    text(el, msg);
  }

  function redraw() {
    for (const c of charts) drawChart(c, hist);
  }

  async function poll() {
    try {
      const [s, alerts, sessions] = await Promise.all([
        get("admin/stats"),
        get("admin/alerts"),
        get("admin/sessions?sort=mailbox&limit=10"),
      ]);
      push(s);
      state.last = s;
      setTiles(s);
      setAlerts(alerts);
      setSessions(sessions);
      redraw();
      state.updates++;
      setStatus(true, "live");
    } catch (e) {
      state.errors++;
      setStatus(false, "not updating: " + e.message);
    }
    setTimeout(poll, POLL_MS);
  }

  async function pollCluster() {
    const cs = state.cluster;
    try {
      const c = await get("admin/cluster");
      cs.last = c;
      setCluster(c);
      cs.updates++;
    } catch (e) {
      if (e.status === 404) { // a node alone: nothing to show, now or later
        cs.alone = true;
        document.getElementById("cluster").hidden = true;
        return;
      }
      cs.errors++;
      // A node of a cluster that cannot tell its status answers an error
      // of its own (503): that is the problem to show. A lost connection
      // is the status line's to show.
      if (e.status) {
        document.getElementById("cluster").hidden = false;
        setProblems(["not updating: " + e.message]);
      }
    }
    setTimeout(pollCluster, CLUSTER_POLL_MS);
  }

  async function start() {
    try {
      const h = await get("admin/stats/history?n=" + WINDOW_S);
      for (const s of h.stats || []) push(s);
      redraw();
    } catch (e) {
      setStatus(false, "not updating: " + e.message);
    }
    poll();
    pollCluster();
  }

  window.addEventListener("resize", redraw);
  start();
})();
