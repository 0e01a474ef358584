// Box drawing and display on a canvas laid over an <img>. Coordinates in the
// API are pixels of the original image; the canvas matches the displayed size.
(function () {
  "use strict";
  const COLORS = ["#ff3b30", "#34c759", "#007aff", "#ff9500", "#af52de", "#5ac8fa", "#ffcc00", "#ff2d55", "#8e8e93"];

  function fit(stage) {
    const img = stage.querySelector("img");
    const canvas = stage.querySelector("canvas");
    canvas.width = img.clientWidth;
    canvas.height = img.clientHeight;
    const natW = img.naturalWidth || +stage.dataset.width || 1;
    const natH = img.naturalHeight || +stage.dataset.height || 1;
    return { canvas, sx: img.clientWidth / natW, sy: img.clientHeight / natH, natW, natH };
  }

  function draw(geom, boxes, labels, preview) {
    const ctx = geom.canvas.getContext("2d");
    ctx.clearRect(0, 0, geom.canvas.width, geom.canvas.height);
    ctx.lineWidth = 2;
    ctx.font = "12px sans-serif";
    const all = preview ? boxes.concat([preview]) : boxes;
    for (const b of all) {
      const i = labels ? Math.max(0, labels.indexOf(b.label)) : 0;
      ctx.strokeStyle = COLORS[i % COLORS.length];
      ctx.fillStyle = ctx.strokeStyle;
      const x = b.x1 * geom.sx, y = b.y1 * geom.sy;
      ctx.strokeRect(x, y, (b.x2 - b.x1) * geom.sx, (b.y2 - b.y1) * geom.sy);
      if (b.label) ctx.fillText(b.label, x + 2, Math.max(10, y - 2));
    }
  }

  function showBoxes(stage) {
    const boxes = JSON.parse(stage.dataset.boxes || "[]");
    const img = stage.querySelector("img");
    const go = () => draw(fit(stage), boxes, null, null);
    if (img.complete) go(); else img.addEventListener("load", go);
  }

  // Mouse drawing: calls onBox({x1,y1,x2,y2}) in image pixels.
  function enableDrawing(stage, getState, onBox) {
    const canvas = stage.querySelector("canvas");
    let start = null;
    function pos(ev) {
      const r = canvas.getBoundingClientRect();
      return { x: ev.clientX - r.left, y: ev.clientY - r.top };
    }
    function toImage(a, b, geom) {
      const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
      return {
        x1: Math.round(clamp(Math.min(a.x, b.x) / geom.sx, geom.natW)),
        y1: Math.round(clamp(Math.min(a.y, b.y) / geom.sy, geom.natH)),
        x2: Math.round(clamp(Math.max(a.x, b.x) / geom.sx, geom.natW)),
        y2: Math.round(clamp(Math.max(a.y, b.y) / geom.sy, geom.natH)),
      };
    }
    canvas.addEventListener("mousedown", (ev) => { start = pos(ev); ev.preventDefault(); });
    canvas.addEventListener("mousemove", (ev) => {
      if (!start) return;
      const st = getState();
      const geom = fit(stage);
      const box = toImage(start, pos(ev), geom);
      box.label = st.label;
      draw(geom, st.boxes, st.labels, box);
    });
    window.addEventListener("mouseup", (ev) => {
      if (!start) return;
      const geom = fit(stage);
      const box = toImage(start, pos(ev), geom);
      start = null;
      if (box.x2 - box.x1 >= 2 && box.y2 - box.y1 >= 2) onBox(box);
      else { const st = getState(); draw(geom, st.boxes, st.labels, null); }
    });
  }

  window.CB = { fit, draw, showBoxes, enableDrawing };
})();
