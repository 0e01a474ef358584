// Keyboard-first labeling: 1-9 pick a class, arrows move, Enter accepts the
// pre-label; for box tasks boxes are drawn with the mouse.
(function () {
  "use strict";
  const root = document.getElementById("annotator");
  const taskId = root.dataset.task;
  const kind = root.dataset.kind;
  const labels = JSON.parse(root.dataset.labels);
  const api = "/api/v1/annotation-tasks/" + encodeURIComponent(taskId);
  const stage = document.getElementById("stage");
  const img = document.getElementById("image");
  const msg = document.getElementById("message");
  let items = [], idx = 0, busy = false, boxClass = 0, boxes = [], touched = false;

  function say(text, cls) { msg.textContent = text; msg.className = "message " + (cls || ""); }

  async function call(method, url, body) {
    const res = await fetch(url, {
      method, credentials: "same-origin",
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    const data = res.status === 204 ? null : await res.json();
    if (!res.ok) throw new Error((data && data.error && data.error.message) || res.statusText);
    return data;
  }

  function counts() {
    document.getElementById("done-count").textContent = items.filter((i) => i.done).length;
    document.getElementById("item-count").textContent = items.length;
  }

  function itemBoxes(it) {
    if (it.boxes) return it.boxes.map((b) => ({ ...b }));
    if (it.prelabel && it.prelabel.boxes) return it.prelabel.boxes.map((b) => ({ ...b }));
    return [];
  }

  function redraw() {
    if (!img.complete || !img.naturalWidth) return;
    CB.draw(CB.fit(stage), kind === "boxes" ? boxes : [], labels, null);
  }

  function markButtons(it) {
    document.querySelectorAll(".cls").forEach((b, i) => {
      b.classList.toggle("selected", kind === "boxes" && i === boxClass);
      b.classList.toggle("chosen", kind !== "boxes" && !!it && it.label === labels[i]);
    });
  }

  function show() {
    counts();
    const it = items[idx];
    const info = document.getElementById("item-info");
    if (!it) {
      img.removeAttribute("src");
      info.textContent = "";
      root.dataset.state = "empty";
      say("All done — nothing left to label in this task.", "ok");
      markButtons(null);
      return;
    }
    root.dataset.state = "item";
    root.dataset.sample = it.sample_id;
    boxes = itemBoxes(it);
    touched = false;
    img.src = "/api/v1/samples/" + it.sample_id + "/image";
    let text = "item " + (idx + 1) + " of " + items.length + (it.done ? " · labeled" : " · open");
    if (it.label) text += ": " + it.label;
    if (it.boxes) text += ": " + it.boxes.length + " box(es)";
    if (it.prelabel) {
      const p = it.prelabel;
      text += " · pre-label: " + (p.label || (p.boxes ? p.boxes.length + " box(es)" : "")) +
        (p.score != null ? " (" + Math.round(p.score * 100) + "%)" : "") + " — Enter accepts";
    }
    if (it.overlap) text += " · overlap";
    if (it.reason) text += " · chosen because: " + it.reason;
    info.textContent = text;
    markButtons(it);
    redraw();
  }

  async function load() {
    items = await call("GET", api + "/items");
    const open = items.findIndex((i) => !i.done);
    idx = open >= 0 ? open : items.length;
    if (open < 0 && items.length) idx = items.length - 1;
    show();
    if (open < 0) say(items.length ? "All your items are labeled." : "Nothing to label.", "ok");
  }

  async function submit(body) {
    const it = items[idx];
    if (!it || busy) return;
    busy = true;
    root.dataset.busy = "1";
    try {
      const res = await call("POST", api + "/submit", { sample_id: it.sample_id, ...body });
      it.done = true;
      it.annotation_id = res.annotation.id;
      it.label = res.annotation.label;
      it.boxes = res.annotation.boxes;
      document.getElementById("task-progress").textContent = Math.round(res.progress * 100);
      say("Saved " + (it.label || (it.boxes.length + " box(es)")) + ".", "ok");
      const next = items.findIndex((i, j) => j > idx && !i.done);
      const anyOpen = items.findIndex((i) => !i.done);
      if (next >= 0) idx = next;
      else if (anyOpen >= 0) idx = anyOpen;
      else { await load(); return; }
      show();
    } catch (e) {
      say(e.message, "err");
    } finally {
      busy = false;
      root.dataset.busy = "0";
    }
  }

  function move(d) {
    if (!items.length) return;
    idx = Math.min(Math.max(idx + d, 0), items.length - 1);
    say("");
    show();
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.target && (ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT")) return;
    if (ev.altKey || ev.ctrlKey || ev.metaKey) return;
    const it = items[idx];
    if (/^[1-9]$/.test(ev.key)) {
      const k = +ev.key - 1;
      if (k >= labels.length) return;
      ev.preventDefault();
      if (kind === "boxes") { boxClass = k; markButtons(it); say("Next box: " + labels[k]); }
      else submit({ label: labels[k] });
    } else if (ev.key === "ArrowRight" || ev.key === "ArrowDown") { ev.preventDefault(); move(1); }
    else if (ev.key === "ArrowLeft" || ev.key === "ArrowUp") { ev.preventDefault(); move(-1); }
    else if (ev.key === "Enter") {
      ev.preventDefault();
      if (!it) return;
      if (kind === "boxes") {
        if (!touched && it.prelabel && it.prelabel.boxes && !it.done) submit({ accept_prelabel: true });
        else submit({ boxes: boxes.map(({ x1, y1, x2, y2, label }) => ({ x1, y1, x2, y2, label })) });
      } else if (it.prelabel && it.prelabel.label) submit({ accept_prelabel: true });
      else say("No pre-label to accept: press a number key.", "err");
    } else if ((ev.key === "Backspace" || ev.key === "Delete") && kind === "boxes") {
      ev.preventDefault();
      boxes.pop(); touched = true; redraw();
    }
  });

  document.querySelectorAll(".cls").forEach((b) => b.addEventListener("click", () => {
    const k = +b.dataset.index;
    if (kind === "boxes") { boxClass = k; markButtons(items[idx]); }
    else submit({ label: labels[k] });
  }));

  img.addEventListener("load", redraw);
  window.addEventListener("resize", redraw);
  if (kind === "boxes") {
    CB.enableDrawing(stage, () => ({ boxes, labels, label: labels[boxClass] }), (box) => {
      box.label = labels[boxClass];
      boxes.push(box);
      touched = true;
      root.dataset.boxes = String(boxes.length);
      redraw();
    });
  }
  load().catch((e) => say(e.message, "err"));
})();
