// Policies page: add (form) and remove (buttons) through /api/v1/policies, then reload.
(function () {
  "use strict";
  const msg = document.getElementById("policy-message");
  function say(text, err) { msg.textContent = text; msg.className = "message" + (err ? " err" : ""); }
  async function api(method, url, body) {
    const res = await fetch(url, {
      method, credentials: "same-origin",
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    if (res.ok) return res.status === 204 ? null : res.json();
    let text = res.status + " " + res.statusText;
    try { const d = await res.json(); if (d && d.error) text = d.error.message; } catch (e) { /* not JSON */ }
    throw new Error(text);
  }
  const form = document.getElementById("policy-form");
  if (form) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      const body = {
        zone: f.get("zone").trim(),
        events: f.get("events").split(",").map((s) => s.trim()).filter(Boolean),
        priority: Number(f.get("priority")),
        hours: f.get("hours").trim(),
        days: f.get("days").trim(),
        description: f.get("description").trim(),
      };
      if (f.get("id").trim()) body.id = f.get("id").trim();
      try {
        const p = await api("POST", "/api/v1/policies", body);
        say("policy " + p.id + " added");
        window.location.reload();
      } catch (e) { say(e.message, true); }
    });
  }
  document.querySelectorAll(".remove-policy").forEach((b) => b.addEventListener("click", async () => {
    if (!window.confirm("Remove policy " + b.dataset.policy + "?")) return;
    try {
      await api("DELETE", "/api/v1/policies/" + encodeURIComponent(b.dataset.policy));
      window.location.reload();
    } catch (e) { say(e.message, true); }
  }));
})();
