// Graph and assignments pages: zone picker, path highlighting in the zone picture,
// confirm / reject of inferred scenes (operators), and "why?" explanations shown in
// place (GET /api/v1/assignments/why). Text from the server is set with textContent.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  async function api(method, url) {
    const res = await fetch(url, { method, credentials: "same-origin" });
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) {
      const msg = data && data.error ? data.error.message : res.status + " " + res.statusText;
      throw new Error(msg);
    }
    return data;
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  const zoneHref = (z) => "/graph/" + z.split("/").filter(Boolean).map(encodeURIComponent).join("/");

  // -- zone picker -----------------------------------------------------------
  const picker = $("zone-picker");
  if (picker) {
    picker.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const z = $("zone-input").value.trim();
      if (z) window.location.href = zoneHref(z);
    });
  }

  // -- preview: computing a city-scale plan takes seconds; say so while it runs ----
  const pv = $("preview-btn");
  if (pv) {
    pv.form.addEventListener("submit", () => {
      pv.disabled = true;
      pv.textContent = "Computing a preview plan…";
      const note = $("preview-note");
      if (note) note.hidden = false;
    });
  }

  // -- zone picture: hover a node to highlight every path through it ---------
  const pic = $("kg-picture");
  if (pic) {
    const edges = Array.from(pic.querySelectorAll("path.edge"));
    const nodes = new Map(Array.from(pic.querySelectorAll("g.node")).map((g) => [g.dataset.key, g]));
    function reach(start) {
      // every node connected to start along the layered paths (both directions)
      const seen = new Set([start]);
      const stack = [start];
      const col = (k) => ["camera", "scene", "event", "algorithm"].indexOf(k.split(":")[0]);
      while (stack.length) {
        const k = stack.pop();
        for (const e of edges) {
          const other = e.dataset.a === k ? e.dataset.b : e.dataset.b === k ? e.dataset.a : null;
          if (other === null || seen.has(other)) continue;
          // walk away from the start only, so a camera does not light up its neighbours' paths
          const away = Math.sign(col(other) - col(k)) === Math.sign(col(k) - col(start)) || k === start;
          if (!away) continue;
          seen.add(other);
          stack.push(other);
        }
      }
      return seen;
    }
    function clear() { pic.querySelectorAll(".hl").forEach((x) => x.classList.remove("hl")); }
    nodes.forEach((g, key) => {
      g.addEventListener("mouseenter", () => {
        clear();
        const on = reach(key);
        on.forEach((k) => nodes.get(k) && nodes.get(k).classList.add("hl"));
        edges.forEach((e) => { if (on.has(e.dataset.a) && on.has(e.dataset.b)) e.classList.add("hl"); });
      });
      g.addEventListener("mouseleave", clear);
    });
  }

  // -- operators: confirm / reject an inferred scene -------------------------
  document.querySelectorAll("button.scene-act").forEach((b) => {
    b.addEventListener("click", async () => {
      const msg = $("scene-message");
      b.disabled = true;
      const url = "/api/v1/graph/cameras/" + encodeURIComponent(b.dataset.camera) + "/scenes/" +
        encodeURIComponent(b.dataset.scene) + "/" + b.dataset.act;
      try {
        await api("POST", url);
        window.location.reload();
      } catch (e) {
        if (msg) { msg.className = "message err"; msg.textContent = e.message; }
        b.disabled = false;
      }
    });
  });

  // -- "why?" -----------------------------------------------------------------
  const cfg = $("why-config");
  const preview = cfg ? cfg.dataset.preview === "true" : false;

  function pairExplanation(x) {
    // knowledge_graph.explain of one (camera, algorithm): e.g. a pinned assignment
    const box = el("div", "why-box " + x.reason);
    box.dataset.status = x.reason;
    const p = el("p", "why-sentence");
    p.appendChild(el("span", "badge", x.reason));
    p.appendChild(document.createTextNode(" " + x.sentence));
    box.appendChild(p);
    if (x.pinned_by && x.pinned_by.length) box.appendChild(el("p", "muted", "pinned by policy " + x.pinned_by.join(", ")));
    return box;
  }

  function explanation(w) {
    const box = el("div", "why-box " + w.status);
    box.dataset.status = w.status;
    box.appendChild(el("p", "why-sentence", w.sentence));
    if (w.source && w.source.kind === "preview") box.appendChild(el("p", "muted", "(against the preview plan)"));
    if (w.policies && w.policies.length) {
      box.appendChild(el("p", "muted", "asked for by policy " + w.policies.join(", ") +
        (w.priority != null ? " (priority " + w.priority + ")" : "")));
    }
    if (w.devices && w.devices.length) {
      box.appendChild(el("strong", null, "Devices reaching " + w.camera + ":"));
      const ul = el("ul", "why-devices");
      for (const d of w.devices) {
        const li = el("li", d.chosen ? "chosen" : "", d.device + (d.target ? " (" + d.target + ")" : "") + ": " + d.verdict);
        ul.appendChild(li);
      }
      box.appendChild(ul);
    } else {
      box.appendChild(el("p", "muted", "No device reaches " + w.camera + "."));
    }
    if (w.explanations && w.explanations.length) {
      box.appendChild(el("strong", null, "Algorithms detecting " + w.event + ":"));
      const ul = el("ul", "why-algorithms");
      for (const x of w.explanations) {
        const li = el("li", null);
        li.appendChild(el("span", "badge", x.reason));
        li.appendChild(document.createTextNode(" " + x.sentence));
        for (const j of x.justifications || []) {
          const p = j.path;
          const text = p.length === 4 ? p[0] + " → " + p[1] + " → " + p[2] + " ← " + p[3] : p.join(" → ");
          li.appendChild(el("div", "path", text));
        }
        ul.appendChild(li);
      }
      box.appendChild(ul);
    }
    return box;
  }

  document.querySelectorAll("button.why").forEach((b) => {
    b.addEventListener("click", async () => {
      const row = b.closest("tr");
      const key = b.dataset.camera + "\u0000" + (b.dataset.event || b.dataset.algorithm);
      let holder = row.nextElementSibling;
      if (holder && holder.classList.contains("why-row") && holder.dataset.key === key) {
        holder.remove();  // second click hides it
        return;
      }
      holder = el("tr", "why-row");
      holder.dataset.key = key;
      const td = el("td");
      td.colSpan = row.children.length;
      td.appendChild(el("span", "muted", "explaining…"));
      holder.appendChild(td);
      row.after(holder);
      const pair = !b.dataset.event;
      const q = new URLSearchParams(pair
        ? { camera: b.dataset.camera, algorithm: b.dataset.algorithm }
        : { camera: b.dataset.camera, event: b.dataset.event });
      if (preview) q.set("preview", "true");
      try {
        const url = pair ? "/api/v1/graph/explain?" : "/api/v1/assignments/why?";
        const w = await api("GET", url + q.toString());
        td.replaceChildren(pair ? pairExplanation(w) : explanation(w));
      } catch (e) {
        td.replaceChildren(el("span", "error", e.message));
      }
    });
  });
})();
