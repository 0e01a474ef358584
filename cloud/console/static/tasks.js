// Live task progress: relays /api/v1/events (SSE) into the table.
(function () {
  "use strict";
  const live = document.getElementById("live");
  const body = document.querySelector("#tasks tbody");
  function row(ev) {
    let tr = document.getElementById("task-" + ev.task_id);
    if (!tr) {
      const empty = body.querySelector("tr.empty");
      if (empty) empty.remove();
      tr = document.createElement("tr");
      tr.id = "task-" + ev.task_id;
      tr.dataset.task = ev.task_id;
      tr.innerHTML = '<td></td><td></td><td class="status"></td><td><progress max="1" value="0"></progress> <span class="pct"></span></td><td class="msg"></td><td></td>';
      tr.children[0].textContent = ev.kind || "";
      tr.children[1].textContent = ev.task_id;
      body.prepend(tr);
    }
    return tr;
  }
  function update(ev) {
    if (ev.type !== "task" || !ev.task_id) return;
    const tr = row(ev);
    if (ev.status) tr.querySelector(".status").textContent = ev.status;
    if (typeof ev.progress === "number") {
      tr.querySelector("progress").value = ev.progress;
      tr.querySelector(".pct").textContent = Math.round(ev.progress * 100) + "%";
    }
    if (ev.message != null) tr.querySelector(".msg").textContent = ev.message;
  }
  const es = new EventSource("/api/v1/events");
  es.addEventListener("hello", () => { live.textContent = "live"; live.dataset.state = "live"; });
  es.onmessage = (m) => { try { update(JSON.parse(m.data)); } catch (e) { /* not JSON: ignore */ } };
  es.onerror = () => { live.textContent = "reconnecting…"; live.dataset.state = "down"; };
})();
