// flask-dbpool dashboard: polls ./data every second; no external assets.
(function () {
  "use strict";
  // A page opened as ?token=…: keep the token in memory only, take it out of the address
  // bar (so out of bookmarks and the browser's list of visited pages too), and send it in
  // the Authorization header of each poll: URLs land in access logs, headers do not.
  const query = new URLSearchParams(location.search);
  const token = query.get("token");
  if (token !== null) {
    query.delete("token");
    const rest = query.toString();
    window.history.replaceState(
      window.history.state, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  const pollHeaders = token ? { Authorization: "Bearer " + token } : {};
  let points = [];  // {t, idle, in_use, waiting}, of the pool shown
  let shown = query.get("pool");  // the pool shown (null: the app's first)
  const HISTORY_SECONDS = 300;
  const $ = (id) => document.getElementById(id);
  const fmt = (s) => s >= 1 ? s.toFixed(2) + " s" : (s * 1000).toFixed(1) + " ms";
  const text = (el, value) => { el.textContent = value; };

  function cell(row, value, cls) {
    const td = row.insertCell(); td.textContent = value; if (cls) td.className = cls; return td;
  }

  function gauges(s) {
    const max = s.pool_size + s.max_overflow;
    for (const key of ["idle", "in_use", "waiting"]) {
      text($("g-" + key), s[key]);
      $("b-" + key).style.width = Math.min(100, 100 * s[key] / Math.max(1, max)) + "%";
    }
    text($("g-open"), s.open + " / " + max);
    $("b-open").style.width = Math.min(100, 100 * s.open / Math.max(1, max)) + "%";
  }

  function series(s, now) {
    points.push({ t: now, idle: s.idle, in_use: s.in_use, waiting: s.waiting });
    while (points.length && points[0].t < now - HISTORY_SECONDS) points.shift();
    const canvas = $("series"), ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, pad = 24;
    ctx.clearRect(0, 0, w, h);
    const top = Math.max(1, s.pool_size + s.max_overflow, ...points.map((p) => p.waiting));
    ctx.fillStyle = "#777"; ctx.font = "11px sans-serif";
    ctx.fillText(String(top), 2, pad - 8); ctx.fillText("0", 2, h - 4);
    const colors = { idle: "#10b981", in_use: "#3b82f6", waiting: "#ef4444" };
    for (const key of Object.keys(colors)) {
      ctx.strokeStyle = colors[key]; ctx.lineWidth = 2; ctx.beginPath();
      points.forEach((p, i) => {
        const x = pad + (w - pad - 4) * (1 - (now - p.t) / HISTORY_SECONDS);
        const y = h - 4 - (h - pad) * (p[key] / top);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
  }

  function histogram(hist) {
    const canvas = $("waits"), ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    const buckets = hist.buckets, most = Math.max(1, ...buckets.map((b) => b.count));
    const bw = (w - 10) / buckets.length;
    ctx.font = "10px sans-serif";
    buckets.forEach((b, i) => {
      const bh = (h - 30) * b.count / most;
      ctx.fillStyle = "#3b82f6"; ctx.fillRect(5 + i * bw, h - 18 - bh, bw - 2, bh);
      if (i % 3 === 0) {
        ctx.fillStyle = "#777";
        ctx.fillText(b.le === "+Inf" ? "inf" : (b.le < 1 ? b.le * 1000 + "ms" : b.le + "s"), 5 + i * bw, h - 4);
      }
    });
    ctx.fillStyle = "#222";
    ctx.fillText(hist.count + " waits, max " + fmt(hist.max), 8, 12);
  }

  function counters(s) {
    const table = $("counters"); table.innerHTML = "";
    const rows = ["acquired", "created", "closed", "timeouts", "rejected", "connect_errors",
      "pings_failed", "leaks_detected", "reclaimed", "transaction_retries"];
    for (const key of rows) {
      const row = table.insertRow(); cell(row, key); cell(row, s[key], "num");
    }
  }

  function checkouts(list) {
    const body = $("checkouts").tBodies[0]; body.innerHTML = "";
    for (const c of list) {
      const row = body.insertRow();
      cell(row, fmt(c.held_seconds), "num"); cell(row, c.pid === undefined ? "" : c.pid, "num");
      cell(row, c.thread); cell(row, c.label || "");
      cell(row, c.caller || "");
      const where = cell(row, c.site || "(set leak_threshold to record)");
      if (c.stack) {
        const details = document.createElement("details");
        const summary = document.createElement("summary"); summary.textContent = "stack";
        const pre = document.createElement("pre"); pre.textContent = c.stack;
        details.append(summary, pre); where.append(details);
      }
    }
  }

  // The database server's connections against every worker's (read once per worker).
  function server(v, workerCount) {
    const el = $("server");
    if (!v) { text(el, ""); return; }
    let line = v.server + ": " + v.open + " open by " + workerCount + " worker(s) of " +
      v.available + " available (max_connections " + v.max_connections + " - reserved " +
      v.reserved + "); all workers at their maximum: " + v.most;
    line += v.fits ? " (fits)" : ". WARNING: does not fit: " + v.suggestion;
    text(el, line); el.classList.toggle("warn", !v.fits);
  }

  // One row per worker process (a single process: one row), with its oldest checkout.
  function workers(list, checkoutList) {
    const body = $("workers").tBodies[0]; body.innerHTML = "";
    for (const w of list || []) {
      const s = w.stats, row = body.insertRow();
      const held = checkoutList.filter((c) => c.pid === w.pid).map((c) => c.held_seconds);
      cell(row, w.pid, "num"); cell(row, s.open, "num"); cell(row, s.in_use, "num");
      cell(row, s.idle, "num"); cell(row, s.waiting, "num"); cell(row, s.acquired, "num");
      cell(row, s.timeouts, "num"); cell(row, held.length ? fmt(Math.max(...held)) : "–", "num");
    }
  }

  function endpoints(map) {
    const body = $("endpoints").tBodies[0]; body.innerHTML = "";
    for (const [name, t] of Object.entries(map)) {
      const row = body.insertRow();
      const mean = (h) => h.count ? fmt(h.sum / h.count) : "–";
      cell(row, name); cell(row, t.wait.count, "num");
      cell(row, mean(t.wait), "num"); cell(row, fmt(t.wait.max), "num");
      cell(row, mean(t.hold), "num"); cell(row, fmt(t.hold.max), "num");
    }
  }

  // With several pools (DBPool's and SQLAlchemy engines' on one app), a list to pick one.
  function pools(names, current) {
    const select = $("pools");
    select.hidden = names.length < 2;
    if (select.dataset.names !== names.join("\n")) {
      select.dataset.names = names.join("\n"); select.innerHTML = "";
      for (const name of names) select.add(new Option(name, name));
    }
    select.value = current;
  }

  $("pools").addEventListener("change", (event) => {
    shown = event.target.value; points = [];
    const rest = new URLSearchParams(location.search); rest.set("pool", shown);
    window.history.replaceState(window.history.state, "", location.pathname + "?" + rest);
    refresh();
  });

  async function refresh() {
    try {
      const url = shown === null ? "data" : "data?pool=" + encodeURIComponent(shown);
      const response = await fetch(url, { cache: "no-store", headers: pollHeaders });
      if (!response.ok) throw new Error("HTTP " + response.status);
      const data = await response.json();
      if (shown !== null && data.pool !== shown) return;  // answered before a switch
      text($("pool"), data.pool); text($("target"), data.target);
      pools(data.pools || [data.pool], data.pool);
      gauges(data.stats); series(data.stats, data.time); histogram(data.stats.wait_time);
      counters(data.stats); workers(data.workers, data.checkouts);
      server(data.server, (data.workers || [0]).length);
      checkouts(data.checkouts); endpoints(data.endpoints);
      text($("status"), "updated " + new Date(data.time * 1000).toLocaleTimeString());
      document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
    } catch (error) {
      text($("status"), "cannot load data: " + error.message);
    }
  }

  refresh();
  setInterval(refresh, 1000);
})();
