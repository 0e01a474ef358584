// Operations pages: overview tiles + chart, devices table, device detail.
// Drawn from the JSON the page embeds, then kept live from /api/v1/events (SSE):
// {"type": "device", "device", "record"|"removed"} and {"type": "fleet", ...}.
(function () {
  "use strict";
  const SVGNS = "http://www.w3.org/2000/svg";

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }
  function initial() {
    return JSON.parse(document.getElementById("ops-data").textContent);
  }
  function ago(iso) {
    if (!iso) return "never";
    const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
    if (s < 60) return Math.round(s) + " s ago";
    if (s < 3600) return Math.round(s / 60) + " min ago";
    if (s < 86400) return Math.round(s / 3600) + " h ago";
    return new Date(iso).toLocaleString();
  }
  function fmt(n) {
    return n >= 100 ? String(Math.round(n)) : String(Math.round(n * 10) / 10);
  }
  function hardware(h) {
    if (!h) return "";
    const parts = [h.target];
    if (h.cores) parts.push(h.cores + " cores");
    if (h.memory_mb) parts.push(Math.round(h.memory_mb / 1024) + " GiB");
    if (h.gpu) parts.push(h.gpu + (h.gpu_arch ? " (" + h.gpu_arch + ")" : ""));
    if (h.tensorrt) parts.push("TensorRT " + h.tensorrt);
    return parts.join(" · ");
  }
  function stateBadge(state) {
    return el("span", { class: "state " + state, "data-state": state }, state);
  }
  function progressBars(progress) {
    const box = el("div", { class: "progress" });
    for (const [what, frac] of Object.entries(progress || {})) {
      const p = el("span", { class: "prog" });
      const bar = el("progress", { max: "1" });
      bar.value = frac;
      p.append(bar, " " + Math.round(frac * 100) + "% " + what);
      box.append(p);
    }
    return box;
  }

  // -- live stream --------------------------------------------------------
  function live(onEvent) {
    const badge = document.getElementById("live");
    const es = new EventSource("/api/v1/events");
    es.addEventListener("hello", () => { badge.textContent = "live"; badge.dataset.state = "live"; });
    es.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      if (ev && (ev.type === "device" || ev.type === "fleet")) onEvent(ev);
    };
    es.onerror = () => { badge.textContent = "reconnecting…"; badge.dataset.state = "down"; };
  }
  // at most one call of fn per `ms`, the last request always served
  function throttle(fn, ms) {
    let last = 0, timer = null;
    return function () {
      const wait = last + ms - Date.now();
      if (timer) return;
      timer = setTimeout(() => { timer = null; last = Date.now(); fn(); }, Math.max(0, wait));
    };
  }
  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin" });
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  // -- overview -----------------------------------------------------------
  function chart(node, series) {
    node.replaceChildren();
    const W = 720, H = 180, L = 36, B = 22, T = 8;
    const n = series.minute.length;
    const max = Math.max(1, ...series.events, ...series.hard);
    const bw = (W - L - 4) / n;
    const y = (v) => H - B - (v / max) * (H - B - T);
    node.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }));
    for (const v of [0, max / 2, max]) {
      node.append(svg("text", { x: L - 4, y: y(v) + 4, "text-anchor": "end" }, fmt(v)));
    }
    series.events.forEach((v, i) => {
      const r = svg("rect", {
        class: "ev", x: L + i * bw + 1, y: y(v), width: Math.max(1, bw - 2), height: H - B - y(v),
      });
      r.append(svg("title", {}, v + " events"));
      node.append(r);
    });
    const pts = series.hard.map((v, i) => (L + (i + 0.5) * bw) + "," + y(v));
    node.append(svg("polyline", { class: "hd", points: pts.join(" ") }));
    series.hard.forEach((v, i) => {
      if (v) node.append(svg("circle", { class: "hdot", cx: L + (i + 0.5) * bw, cy: y(v), r: 2.5 }));
    });
    const label = (m) => new Date(m * 60000).toTimeString().slice(0, 5);
    node.append(svg("text", { x: L, y: H - 6 }, label(series.minute[0])));
    node.append(svg("text", { x: W - 4, y: H - 6, "text-anchor": "end" }, "now"));
  }
  function drawOverview(d) {
    const set = (id, v) => { document.getElementById(id).textContent = v; };
    set("t-online", d.devices.online);
    set("t-devices", "of " + d.devices.total + " devices");
    set("t-offline", d.devices.offline);
    set("t-errors", d.devices.with_errors ? d.devices.with_errors + " with errors" : "");
    set("t-events", fmt(d.events_per_min));
    set("t-hard", fmt(d.hard_per_min));
    set("t-tasks", d.tasks_running);
    set("t-queued", d.tasks_queued ? d.tasks_queued + " queued" : "");
    chart(document.getElementById("rate-chart"), d.series);
    const models = document.getElementById("models");
    models.replaceChildren();
    if (!d.models.length) models.append(el("p", { class: "muted" }, "No device has a model loaded yet."));
    const most = Math.max(1, ...d.models.map((m) => m.devices));
    for (const m of d.models) {
      const row = el("div", { class: "verbar", "data-model": m.algorithm + "@" + m.version });
      row.append(el("span", { class: "name" }, m.algorithm + " " + m.version));
      const bar = el("span", { class: "bar" });
      bar.style.width = (m.devices / most) * 320 + "px";
      row.append(bar, el("span", {}, m.devices + " device" + (m.devices === 1 ? "" : "s") +
        " (" + m.online + " online) · " + m.runtimes.join(", ")));
      models.append(row);
    }
    const rej = Object.entries(d.rejected).map(([k, v]) => k + " " + v).join(", ");
    set("watchers", (d.watchers.length ? "fleet mirror: " + d.watchers.join(", ")
      : "no fleet mirror is running: start `citybrain fleet watch`") +
      (rej ? " · rejected device messages: " + rej : ""));
  }
  function overview() {
    drawOverview(initial());
    const refresh = throttle(() => getJSON("/api/v1/overview").then(drawOverview).catch(() => {}), 1000);
    live(refresh);
    setInterval(refresh, 15000); // rates decay when nothing arrives
  }

  // -- devices ------------------------------------------------------------
  function deviceRow(d) {
    const tr = el("tr", { id: "dev-" + d.id, "data-device": d.id, "data-state": d.state });
    const name = el("td");
    name.append(el("a", { href: "/devices/" + encodeURIComponent(d.id) }, d.id));
    if (d.agent_version) name.append(el("small", { class: "muted" }, " agent " + d.agent_version));
    const st = el("td");
    st.append(stateBadge(d.state));
    if (d.state_since) st.append(el("small", { class: "muted" }, " " + ago(d.state_since)));
    const models = el("td", { class: "models" });
    for (const m of d.models) {
      models.append(el("span", { class: "model" }, m.algorithm + " " + m.version + " · " + m.runtime));
    }
    if (d.applied_revision != null) models.append(el("small", { class: "muted" }, "revision " + d.applied_revision));
    const running = d.streams.filter((s) => s.state === "running").length;
    const streams = el("td", {}, d.streams.length ? running + "/" + d.streams.length + " running" : "");
    const fps = d.streams.reduce((a, s) => a + s.fps, 0);
    if (d.streams.length) streams.append(el("small", { class: "muted" }, " " + fmt(fps) + " fps"));
    const prog = el("td");
    prog.append(progressBars(d.progress));
    const errs = [d.last_error, ...d.streams.filter((s) => s.error).map((s) => s.stream + ": " + s.error)];
    tr.append(
      name, st, el("td", {}, hardware(d.hardware)), models, streams,
      el("td", {}, fmt(d.events_per_min) + (d.hard_per_min ? " · " + fmt(d.hard_per_min) + " hard" : "")),
      prog, el("td", { class: "err" }, errs.filter(Boolean).join("; ")),
      el("td", { class: "seen" }, ago(d.last_seen)),
    );
    return tr;
  }
  function devices() {
    const table = document.getElementById("devices");
    const body = table.querySelector("tbody");
    const only = table.dataset.state || null;
    const rows = new Map();
    function upsert(d) {
      const old = document.getElementById("dev-" + d.id);
      if (only && d.state !== only) {
        if (old) old.remove();
        rows.delete(d.id);
      } else {
        const tr = deviceRow(d);
        if (old) old.replaceWith(tr);
        else {
          const after = [...body.children].find((r) => r.dataset.device > d.id);
          body.insertBefore(tr, after || null);
        }
        rows.set(d.id, d);
      }
      document.getElementById("empty").hidden = rows.size > 0;
      document.getElementById("count").textContent = rows.size + " shown";
    }
    function drop(id) {
      const old = document.getElementById("dev-" + id);
      if (old) old.remove();
      rows.delete(id);
      document.getElementById("empty").hidden = rows.size > 0;
    }
    for (const d of initial()) upsert(d);
    document.getElementById("empty").hidden = rows.size > 0;
    const reload = throttle(() => getJSON("/api/v1/devices" + (only ? "?state=" + only : ""))
      .then((list) => {
        const ids = new Set(list.map((d) => d.id));
        for (const id of [...rows.keys()]) if (!ids.has(id)) drop(id);
        list.forEach(upsert);
      }).catch(() => {}), 5000);
    live((ev) => {
      if (ev.type === "device" && ev.removed) drop(ev.device);
      else if (ev.type === "device" && ev.record) upsert(ev.record);
      else if (ev.type === "fleet") reload(); // rates and last-seen times
    });
    setInterval(reload, 30000);
  }

  // -- one device ---------------------------------------------------------
  function drawDevice(d) {
    const box = document.getElementById("device");
    box.replaceChildren();
    const meta = el("table", { class: "meta card" });
    const add = (k, v) => {
      const tr = el("tr");
      const td = el("td");
      if (v instanceof Node) td.append(v); else td.textContent = v == null ? "" : v;
      tr.append(el("th", {}, k), td);
      meta.append(tr);
    };
    add("Status", stateBadge(d.state));
    add("Since", d.state_since ? new Date(d.state_since).toLocaleString() : "");
    add("Last seen", ago(d.last_seen));
    add("Agent", d.agent_version);
    add("Hardware", hardware(d.hardware));
    add("Applied revision", d.applied_revision);
    add("Events / min", fmt(d.events_per_min));
    add("Hard samples / min", fmt(d.hard_per_min));
    if (d.outbox) add("Hard-sample outbox", d.outbox.depth + " waiting, " + d.outbox.dropped + " dropped");
    add("Rejected messages", d.rejected);
    add("Last error", d.last_error);
    if (d.last_event) {
      add("Last event", d.last_event.event + " on " + d.last_event.stream + " (" +
        d.last_event.algorithm + " " + d.last_event.model_version + ") " + ago(d.last_event.at));
    }
    add("In progress", progressBars(d.progress));
    box.append(meta);
    const models = el("table", { class: "list" });
    models.append(el("caption", {}, "Loaded models"));
    models.innerHTML += "<tr><th>Algorithm</th><th>Version</th><th>Runtime</th><th>sha256</th></tr>";
    for (const m of d.models) {
      const tr = el("tr");
      tr.append(el("td", {}, m.algorithm), el("td", {}, m.version), el("td", {}, m.runtime),
        el("td", {}, m.sha256.slice(0, 12)));
      models.append(tr);
    }
    const streams = el("table", { class: "list" });
    streams.append(el("caption", {}, "Streams"));
    streams.innerHTML += "<tr><th>Stream</th><th>State</th><th>fps</th><th>Frames</th><th>Dropped</th><th>Inference ms</th><th>Error</th></tr>";
    for (const s of d.streams) {
      const tr = el("tr");
      tr.append(el("td", {}, s.stream), el("td", {}, s.state), el("td", {}, fmt(s.fps)),
        el("td", {}, s.frames), el("td", {}, s.dropped), el("td", {}, fmt(s.inference_ms)),
        el("td", { class: "err" }, s.error || ""));
      streams.append(tr);
    }
    box.append(models, el("br"), streams);
  }
  function device() {
    const id = document.getElementById("device").dataset.device;
    drawDevice(initial());
    const reload = throttle(() => getJSON("/api/v1/devices/" + encodeURIComponent(id))
      .then(drawDevice).catch(() => {}), 5000);
    live((ev) => {
      if (ev.type === "device" && ev.device === id && ev.record) drawDevice(ev.record);
      else if (ev.type === "fleet") reload();
    });
  }

  window.CBOps = { overview, devices, device };
})();
