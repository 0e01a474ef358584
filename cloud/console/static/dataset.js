// New annotation task form (operators) on the dataset page.
(function () {
  "use strict";
  // the labeled count and version need table scans: fetched after the page is shown
  const header = document.getElementById("ds-header");
  if (header) {
    fetch("/api/v1/datasets/" + encodeURIComponent(header.dataset.dataset), { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : null))
      .then((st) => {
        if (!st) return;
        document.getElementById("labeled-count").textContent = st.labeled;
        if (st.latest_version) document.getElementById("ds-version").textContent = " · version " + st.latest_version;
        header.dataset.loaded = "1";
      });
  }
  const form = document.getElementById("new-task-form");
  if (!form) return;
  const list = (s) => s.split(",").map((x) => x.trim()).filter(Boolean);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = new FormData(form);
    const body = {
      dataset: form.dataset.dataset, kind: f.get("kind"), limit: +f.get("limit"),
      batch_size: +f.get("batch_size"), overlap: +f.get("overlap"),
      annotators: list(f.get("annotators") || ""),
    };
    const labels = list(f.get("labels") || "");
    if (labels.length) body.labels = labels;
    const res = await fetch("/api/v1/annotation-tasks", { method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const data = await res.json();
    if (!res.ok) { document.getElementById("new-task-error").textContent = data.error.message; return; }
    window.location = "/annotate/" + data.id;
  });
})();
