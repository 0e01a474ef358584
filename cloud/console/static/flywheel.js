// Flywheel + store buttons: Train / Pretrain with a live progress bar (SSE from
// /api/v1/events, polling /api/v1/tasks/{id} as a fallback), Publish, Promote, Rollback.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  async function api(method, url, body) {
    const res = await fetch(url, {
      method, credentials: "same-origin",
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) {
      const msg = data && data.error ? data.error.message : res.status + " " + res.statusText;
      throw new Error(msg);
    }
    return data;
  }
  const FINISHED = ["succeeded", "failed", "cancelled", "dead"];

  // -- dataset page: Train / Pretrain -------------------------------------------
  const fw = $("flywheel");
  if (fw && $("train-btn")) {
    const dataset = fw.dataset.dataset;
    const err = $("flywheel-error");
    let es = null, poll = null, current = null;
    function setBusy(busy) {
      ["train-btn", "pretrain-btn", "mine-btn"].forEach((id) => { if ($(id)) $(id).disabled = busy; });
    }
    function show(t) {
      if (!current || t.task_id !== current) return;
      if (typeof t.progress === "number") {
        $("job-bar").value = t.progress;
        $("job-pct").textContent = Math.round(t.progress * 100) + "%";
      }
      if (t.status) { $("job-status").textContent = t.status; $("job").dataset.status = t.status; }
      if (t.message != null) $("job-message").textContent = t.message === t.status ? "" : t.message;
      if (FINISHED.includes(t.status)) finish();
    }
    async function finish() {
      const id = current;
      if (!id) return;
      current = null;
      if (es) { es.close(); es = null; }
      if (poll) { clearInterval(poll); poll = null; }
      const t = await api("GET", "/api/v1/tasks/" + id + "?log_limit=0");
      $("job-status").textContent = t.status;
      $("job").dataset.status = t.status;
      $("job-bar").value = t.status === "succeeded" ? 1 : t.progress;
      $("job-pct").textContent = Math.round($("job-bar").value * 100) + "%";
      if (t.status === "succeeded" && t.result && t.result.model_id) {
        $("job-result").innerHTML = "";
        const a = document.createElement("a");
        a.href = "/models/" + t.result.model_id; a.id = "job-model-link";
        a.textContent = "model " + t.result.algorithm + " " + t.result.version;
        $("job-result").appendChild(a);
      } else if (t.status === "succeeded" && t.result && t.result.annotation_task_id) {
        $("job-result").innerHTML = "";
        const a = document.createElement("a");
        a.href = "/annotate/" + t.result.annotation_task_id; a.id = "job-annotate-link";
        a.textContent = "annotation task: " + t.result.selected + " samples (" + t.result.from_field + " field hard cases)";
        $("job-result").appendChild(a);
      } else if (t.status !== "succeeded") {
        err.textContent = t.error || t.message || t.status;
      }
      setBusy(false);
    }
    async function start(kind, body) {
      err.textContent = ""; $("job-result").textContent = "";
      setBusy(true);
      try {
        // listen first (as the tasks page does), so no update of the new task is missed
        es = new EventSource("/api/v1/events");
        es.onmessage = (m) => {
          try {
            const ev = JSON.parse(m.data);
            if (ev.type !== "task" || ev.task_id !== current) return;
            $("job").dataset.live = "1";  // an update arrived over SSE
            show(ev);
          } catch (e) { /* not JSON: ignore */ }
        };
        await new Promise((ok) => { es.addEventListener("hello", ok, { once: true }); setTimeout(ok, 3000); });
        const t = await api("POST", "/api/v1/datasets/" + encodeURIComponent(dataset) + "/" + kind, body);
        current = t.id;
        $("job").hidden = false;
        $("job").dataset.task = t.id;
        delete $("job").dataset.live;
        $("job").dataset.status = "";
        fw.querySelector(".job-kind").textContent = kind;
        show({ task_id: t.id, status: t.status, progress: t.progress, message: t.message });
        poll = setInterval(async () => {
          if (!current) return;
          try {
            const s = await api("GET", "/api/v1/tasks/" + current + "?log_limit=0");
            show({ task_id: s.id, status: s.status, progress: s.progress, message: s.error || s.message });
          } catch (e) { /* transient */ }
        }, 3000);
      } catch (e) {
        if (es) { es.close(); es = null; }
        err.textContent = e.message;
        setBusy(false);
      }
    }
    $("train-btn").addEventListener("click", () => {
      const algorithm = $("train-algorithm").value.trim();
      const task = $("train-task") ? $("train-task").value : "classify";
      start("train", algorithm ? { algorithm, task } : { task });
    });
    $("pretrain-btn").addEventListener("click", () => start("pretrain", { epochs: +$("pretrain-epochs").value || 20 }));
    $("mine-btn").addEventListener("click", () =>
      start("mine", { budget: +$("mine-budget").value || 20, strategy: $("mine-strategy").value }));
  }

  // -- model page: Publish ---------------------------------------------------------
  const pub = $("publish");
  if (pub) {
    const msg = $("publish-message");
    $("publish-btn").addEventListener("click", async () => {
      msg.className = "message"; msg.textContent = "publishing…";
      $("publish-btn").disabled = true;
      try {
        const out = await api("POST", "/api/v1/models/" + pub.dataset.model + "/publish",
          { channel: $("publish-channel").value.trim() || null });
        msg.className = "message ok";
        msg.innerHTML = "";
        msg.append("Published " + out.algorithm + " " + out.version + (out.channel ? " to " + out.channel : "") + ". ");
        const a = document.createElement("a"); a.href = "/store"; a.id = "store-link"; a.textContent = "See the store";
        msg.appendChild(a);
        const st = $("model-status"); if (st) st.textContent = "published";
      } catch (e) {
        msg.className = "message err"; msg.textContent = e.message;
        $("publish-btn").disabled = false;
      }
    });
  }

  // -- store page: Promote / Rollback ------------------------------------------------
  const storeMsg = $("store-message");
  if (storeMsg) {
    const fail = (e) => { storeMsg.className = "message err"; storeMsg.textContent = e.message; };
    document.querySelectorAll(".promote-btn").forEach((b) => b.addEventListener("click", async () => {
      const algo = b.closest(".algorithm").dataset.algorithm;
      const channel = b.parentElement.querySelector(".promote-channel").value;
      try {
        await api("POST", "/api/v1/store/algorithms/" + encodeURIComponent(algo) + "/channels/" +
          encodeURIComponent(channel) + "/promote", { version: b.dataset.version, reason: "console" });
        window.location.reload();
      } catch (e) { fail(e); }
    }));
    document.querySelectorAll(".rollback-btn").forEach((b) => b.addEventListener("click", async () => {
      const algo = b.closest(".algorithm").dataset.algorithm;
      try {
        await api("POST", "/api/v1/store/algorithms/" + encodeURIComponent(algo) + "/channels/" +
          encodeURIComponent(b.dataset.channel) + "/rollback", { reason: "console" });
        window.location.reload();
      } catch (e) { fail(e); }
    }));
  }
})();
