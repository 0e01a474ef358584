// Review pass: a accept, r reject, 1-9 correct (classification), arrow skips.
(function () {
  "use strict";
  const root = document.getElementById("reviewer");
  const labels = JSON.parse(root.dataset.labels);
  const kind = root.dataset.kind;
  const api = "/api/v1/annotation-tasks/" + encodeURIComponent(root.dataset.task);
  const stage = document.getElementById("stage");
  const img = document.getElementById("image");
  const msg = document.getElementById("message");
  let queue = [], i = 0, busy = false;

  async function call(method, url, body) {
    const res = await fetch(url, { method, credentials: "same-origin",
      headers: body ? { "Content-Type": "application/json" } : {}, body: body ? JSON.stringify(body) : undefined });
    const data = await res.json();
    if (!res.ok) throw new Error((data.error && data.error.message) || res.statusText);
    return data;
  }
  function show() {
    const it = queue[i];
    const info = document.getElementById("review-info");
    if (!it) { img.removeAttribute("src"); info.textContent = "Nothing waiting for review."; return; }
    img.src = "/api/v1/samples/" + it.sample_id + "/image";
    info.textContent = (i + 1) + " of " + queue.length + " · " +
      (it.label || ((it.boxes || []).length + " box(es)"));
  }
  function redraw() {
    const it = queue[i];
    if (it && img.naturalWidth) CB.draw(CB.fit(stage), kind === "boxes" ? it.boxes || [] : [], labels, null);
  }
  async function load() { queue = await call("GET", api + "/review?limit=500"); i = 0; show(); }
  async function act(body) {
    const it = queue[i];
    if (!it || busy) return;
    busy = true;
    try {
      await call("POST", api + "/review", { annotation_id: it.annotation_id, ...body });
      msg.textContent = body.action + "ed"; msg.className = "message ok";
      queue.splice(i, 1); if (i >= queue.length) i = 0; show();
    } catch (e) { msg.textContent = e.message; msg.className = "message err"; }
    finally { busy = false; }
  }
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "a") act({ action: "accept" });
    else if (ev.key === "r") act({ action: "reject" });
    else if (/^[1-9]$/.test(ev.key) && kind !== "boxes" && +ev.key <= labels.length) act({ action: "correct", label: labels[+ev.key - 1] });
    else if (ev.key === "ArrowRight") { i = queue.length ? (i + 1) % queue.length : 0; show(); }
  });
  img.addEventListener("load", redraw);
  load().catch((e) => { msg.textContent = e.message; msg.className = "message err"; });
})();
