// Upload form: multipart POST to /api/v1/datasets/{name}/uploads, then show the import report.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const out = document.getElementById("upload-result");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const name = document.getElementById("upload-dataset").value.trim();
    const body = new FormData();
    for (const f of document.getElementById("upload-files").files) body.append("file", f, f.name);
    const labels = document.getElementById("upload-labels").files[0];
    if (labels) body.append("labels", labels, labels.name);
    out.className = "message";
    out.textContent = "Uploading…";
    try {
      const res = await fetch("/api/v1/datasets/" + encodeURIComponent(name) + "/uploads",
        { method: "POST", credentials: "same-origin", body });
      const data = await res.json();
      if (!res.ok) throw new Error(data.error ? data.error.message : res.statusText);
      out.className = "message ok";
      out.innerHTML = "";
      const link = document.createElement("a");
      link.href = "/datasets/" + encodeURIComponent(data.dataset);
      link.textContent = data.dataset;
      out.append("Imported into ", link, ": " + data.added + " added, " + data.existing +
        " already there, " + data.skipped.length + " skipped" +
        (data.skipped.length ? " (" + data.skipped.map((s) => s.file + ": " + s.reason).join("; ") + ")" : "") + ".");
      out.dataset.added = String(data.added);
    } catch (e) {
      out.className = "message err";
      out.textContent = e.message;
    }
  });
})();
