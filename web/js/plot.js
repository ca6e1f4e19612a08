// The loss plot on the train panel: raw and smoothed loss over the steps, the column-selection steps marked,
// the value under the pointer, PNG / CSV export. A <canvas> (the PNG is the canvas itself); pure DOM.

import { el, formatLoss } from "./format.js";

/** [{step, loss}] of a job: its loss history is one value per step, the last one at job.step. */
export function lossPoints(job) {
  const losses = job?.losses || [];
  const last = job?.step || losses.length;
  const first = last - losses.length + 1;
  return losses.map((loss, i) => ({ step: first + i, loss })).filter((p) => Number.isFinite(p.loss));
}

/** TensorBoard-style exponential smoothing, debiased so the first values are not pulled towards 0. */
export function smooth(values, weight = 0.9) {
  const out = [];
  let acc = 0;
  let norm = 0;
  for (const v of values) {
    acc = acc * weight + (1 - weight) * v;
    norm = norm * weight + (1 - weight);
    out.push(acc / norm);
  }
  return out;
}

/** Steps at which columns are selected, as the server's job record says (training/job_records.py derives them
 * from the run's settings with the schedule's own rule); [] for modes without column separation. */
export function selectionSteps(job) {
  return Array.isArray(job?.selection_steps) ? job.selection_steps : [];
}

export function lossCSV(job) {
  const pts = lossPoints(job);
  const sm = smooth(pts.map((p) => p.loss));
  const rows = ["step,loss,smoothed"];
  pts.forEach((p, i) => rows.push(`${p.step},${p.loss},${sm[i].toPrecision(6)}`));
  return rows.join("\n") + "\n";
}

const PAD = { left: 44, right: 8, top: 8, bottom: 18 };

export class LossPlot {
  /** @param {number} height CSS pixels (the width follows the panel) */
  constructor(height = 112) {
    this.height = height;
    this.job = null;
    this.hover = null; // index into the points
    this.canvas = el("canvas", { class: "uzl-plot-canvas", "data-role": "loss-plot", height: String(height) });
    this.readout = el("span", { class: "uzl-plot-readout", "data-role": "loss-readout" });
    this.pngBtn = el("button", {
      class: "uzl-btn uzl-btn-small", type: "button", "data-action": "loss-png", title: "Save the plot as PNG",
      onclick: () => this.download("png"),
    }, "PNG");
    this.csvBtn = el("button", {
      class: "uzl-btn uzl-btn-small", type: "button", "data-action": "loss-csv",
      title: "Save the loss of every step as CSV (step, loss, smoothed)", onclick: () => this.download("csv"),
    }, "CSV");
    this.element = el("div", { class: "uzl-plot", "data-role": "plot" },
      this.canvas,
      el("div", { class: "uzl-plot-foot" }, this.readout, el("span", { class: "uzl-grow" }), this.pngBtn, this.csvBtn));
    this.canvas.addEventListener("pointermove", (e) => this._onMove(e));
    this.canvas.addEventListener("pointerleave", () => {
      this.hover = null;
      this.draw();
    });
  }

  setJob(job) {
    this.job = job;
    this.draw();
  }

  _geometry() {
    const width = Math.max(120, Math.round(this.canvas.clientWidth || this.canvas.parentElement?.clientWidth || 300));
    return { width, height: this.height };
  }

  _onMove(e) {
    const pts = lossPoints(this.job);
    if (pts.length < 2) return;
    const r = this.canvas.getBoundingClientRect();
    // the canvas may be scaled by the graph's zoom: map through its on-screen size
    const x = ((e.clientX - r.left) / r.width) * this._geometry().width;
    const { x0, x1 } = this._xRange(pts);
    const step = x0 + ((x - PAD.left) / (this._geometry().width - PAD.left - PAD.right)) * (x1 - x0);
    let best = 0;
    for (let i = 1; i < pts.length; i++) if (Math.abs(pts[i].step - step) < Math.abs(pts[best].step - step)) best = i;
    this.hover = best;
    this.draw();
  }

  _xRange(pts) {
    const x0 = Math.min(pts[0].step, 1);
    const x1 = Math.max(this.job?.total || 0, pts[pts.length - 1].step, x0 + 1);
    return { x0, x1 };
  }

  draw() {
    const pts = lossPoints(this.job);
    const { width, height } = this._geometry();
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(width * dpr)) this.canvas.width = Math.round(width * dpr);
    this.canvas.height = Math.round(height * dpr);
    const ctx = this.canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const style = getComputedStyle(this.element);
    const fg = style.getPropertyValue("--uzl-fg").trim() || "#ddd";
    const muted = style.getPropertyValue("--uzl-muted").trim() || "#999";
    const accent = style.getPropertyValue("--uzl-accent").trim() || "#3b82f6";
    const warn = style.getPropertyValue("--uzl-warn").trim() || "#f59e0b";
    ctx.fillStyle = style.getPropertyValue("--uzl-plot-bg").trim() || "rgba(0,0,0,0.25)";
    ctx.fillRect(0, 0, width, height);
    ctx.font = "10px sans-serif";
    const pw = width - PAD.left - PAD.right;
    const ph = height - PAD.top - PAD.bottom;
    if (pts.length < 2) {
      ctx.fillStyle = muted;
      ctx.textAlign = "center";
      ctx.fillText(this.job ? "the loss appears after the first steps" : "loss", width / 2, height / 2);
      this.readout.textContent = "";
      this._enableExport(false);
      return;
    }
    this._enableExport(true);
    const losses = pts.map((p) => p.loss);
    const sm = smooth(losses);
    let lo = Math.min(...losses);
    let hi = Math.max(...losses);
    if (hi - lo < 1e-9) {
      lo -= 0.5;
      hi += 0.5;
    }
    const { x0, x1 } = this._xRange(pts);
    const X = (s) => PAD.left + ((s - x0) / (x1 - x0)) * pw;
    const Y = (v) => PAD.top + (1 - (v - lo) / (hi - lo)) * ph;

    // axes and ticks
    ctx.strokeStyle = muted;
    ctx.globalAlpha = 0.5;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(PAD.left, PAD.top);
    ctx.lineTo(PAD.left, PAD.top + ph);
    ctx.lineTo(PAD.left + pw, PAD.top + ph);
    ctx.stroke();
    ctx.globalAlpha = 1;
    ctx.fillStyle = muted;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of [hi, (hi + lo) / 2, lo]) ctx.fillText(formatLoss(v), PAD.left - 4, Y(v));
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const s of [x0, Math.round((x0 + x1) / 2), x1]) ctx.fillText(String(s), X(s), PAD.top + ph + 4);

    // column selections
    ctx.strokeStyle = warn;
    ctx.setLineDash([3, 3]);
    for (const s of selectionSteps(this.job)) {
      if (s < x0 || s > x1) continue;
      ctx.beginPath();
      ctx.moveTo(X(s), PAD.top);
      ctx.lineTo(X(s), PAD.top + ph);
      ctx.stroke();
    }
    ctx.setLineDash([]);

    // raw (faint) and smoothed loss
    const line = (values, color, alpha, w) => {
      ctx.strokeStyle = color;
      ctx.globalAlpha = alpha;
      ctx.lineWidth = w;
      ctx.beginPath();
      values.forEach((v, i) => (i ? ctx.lineTo(X(pts[i].step), Y(v)) : ctx.moveTo(X(pts[i].step), Y(v))));
      ctx.stroke();
      ctx.globalAlpha = 1;
    };
    line(losses, accent, 0.35, 1);
    line(sm, accent, 1, 1.8);

    // hover: a marker and the values
    const i = this.hover ?? pts.length - 1;
    const p = pts[Math.min(i, pts.length - 1)];
    if (this.hover !== null) {
      ctx.strokeStyle = fg;
      ctx.globalAlpha = 0.6;
      ctx.beginPath();
      ctx.moveTo(X(p.step), PAD.top);
      ctx.lineTo(X(p.step), PAD.top + ph);
      ctx.stroke();
      ctx.globalAlpha = 1;
      ctx.fillStyle = fg;
      ctx.beginPath();
      ctx.arc(X(p.step), Y(p.loss), 2.5, 0, 2 * Math.PI);
      ctx.fill();
    }
    const sel = selectionSteps(this.job).includes(p.step) ? " · columns selected" : "";
    this.readout.textContent = `step ${p.step}: loss ${formatLoss(p.loss)}, smoothed ${formatLoss(sm[i])}${sel}`;
  }

  _enableExport(on) {
    this.pngBtn.disabled = !on;
    this.csvBtn.disabled = !on;
  }

  download(kind) {
    if (!this.job) return;
    const name = `${this.job.name || "unziplora"}_loss.${kind}`;
    const href = kind === "png"
      ? this.canvas.toDataURL("image/png")
      : URL.createObjectURL(new Blob([lossCSV(this.job)], { type: "text/csv" }));
    const a = el("a", { href, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    if (kind !== "png") setTimeout(() => URL.revokeObjectURL(href), 5000);
  }
}
