// The loss plot on the train panel: raw and smoothed loss over the steps, the column-selection steps marked,
// the value under the pointer, PNG / CSV export. A <canvas>; the PNG is drawn larger, with a title, axis labels
// and a legend. Pure DOM.

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
    const { width, height } = this._geometry();
    const dpr = window.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(width * dpr)) this.canvas.width = Math.round(width * dpr);
    this.canvas.height = Math.round(height * dpr);
    const ctx = this.canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const p = this._paint(ctx, width, height, PAD, 10);
    this._enableExport(!!p);
    if (!p) {
      this.readout.textContent = "";
      return;
    }
    const sel = selectionSteps(this.job).includes(p.step) ? " · columns selected" : "";
    this.readout.textContent = `step ${p.step}: ${formatLoss(p.loss)} (smoothed ${formatLoss(p.smoothed)})${sel}`;
    this.readout.title = this.readout.textContent; // the panel is narrow: the whole text on hover
  }

  /** The plot on any 2D context: the panel's canvas, or the larger one the PNG export draws with a title, axis
   * labels and a legend. Returns the point shown in the readout (or null without a curve). */
  _paint(ctx, width, height, pad, fontPx, labelled = false) {
    const pts = lossPoints(this.job);
    const style = getComputedStyle(this.element);
    const fg = style.getPropertyValue("--uzl-fg").trim() || "#ddd";
    const muted = style.getPropertyValue("--uzl-muted").trim() || "#999";
    const accent = style.getPropertyValue("--uzl-accent").trim() || "#3b82f6";
    const warn = style.getPropertyValue("--uzl-warn").trim() || "#f59e0b";
    ctx.fillStyle = labelled ? "#1e1e1e" : style.getPropertyValue("--uzl-plot-bg").trim() || "rgba(0,0,0,0.25)";
    ctx.fillRect(0, 0, width, height);
    ctx.font = `${fontPx}px sans-serif`;
    const pw = width - pad.left - pad.right;
    const ph = height - pad.top - pad.bottom;
    if (pts.length < 2) {
      ctx.fillStyle = muted;
      ctx.textAlign = "center";
      ctx.fillText(this.job ? "the loss appears after the first steps" : "loss", width / 2, height / 2);
      return null;
    }
    const losses = pts.map((p) => p.loss);
    const sm = smooth(losses);
    let lo = Math.min(...losses);
    let hi = Math.max(...losses);
    if (hi - lo < 1e-9) {
      lo -= 0.5;
      hi += 0.5;
    }
    const { x0, x1 } = this._xRange(pts);
    const X = (s) => pad.left + ((s - x0) / (x1 - x0)) * pw;
    const Y = (v) => pad.top + (1 - (v - lo) / (hi - lo)) * ph;

    // axes and ticks
    ctx.strokeStyle = muted;
    ctx.globalAlpha = 0.5;
    ctx.lineWidth = 1;
    ctx.beginPath();
    ctx.moveTo(pad.left, pad.top);
    ctx.lineTo(pad.left, pad.top + ph);
    ctx.lineTo(pad.left + pw, pad.top + ph);
    ctx.stroke();
    ctx.globalAlpha = 1;
    ctx.fillStyle = muted;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const v of [hi, (hi + lo) / 2, lo]) ctx.fillText(formatLoss(v), pad.left - 4, Y(v));
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (const s of [x0, Math.round((x0 + x1) / 2), x1]) ctx.fillText(String(s), X(s), pad.top + ph + 4);

    // column selections
    ctx.strokeStyle = warn;
    ctx.setLineDash([3, 3]);
    for (const s of selectionSteps(this.job)) {
      if (s < x0 || s > x1) continue;
      ctx.beginPath();
      ctx.moveTo(X(s), pad.top);
      ctx.lineTo(X(s), pad.top + ph);
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
    const i = Math.min(this.hover ?? pts.length - 1, pts.length - 1);
    const p = pts[i];
    if (this.hover !== null && !labelled) {
      ctx.strokeStyle = fg;
      ctx.globalAlpha = 0.6;
      ctx.beginPath();
      ctx.moveTo(X(p.step), pad.top);
      ctx.lineTo(X(p.step), pad.top + ph);
      ctx.stroke();
      ctx.globalAlpha = 1;
      ctx.fillStyle = fg;
      ctx.beginPath();
      ctx.arc(X(p.step), Y(p.loss), 2.5, 0, 2 * Math.PI);
      ctx.fill();
    }
    if (labelled) {
      const job = this.job;
      ctx.fillStyle = fg;
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      ctx.font = `bold ${fontPx + 4}px sans-serif`;
      ctx.fillText(`UnZipLoRA loss: ${job.name ?? ""}`, pad.left, 12);
      ctx.font = `${fontPx}px sans-serif`;
      ctx.fillStyle = muted;
      const mode = job.info?.mode ? `mode ${job.info.mode} · ` : "";
      ctx.fillText(`${mode}job ${job.id} · steps ${pts[0].step}–${pts[pts.length - 1].step} of ${job.total || "?"}`,
        pad.left, 12 + fontPx + 8);
      ctx.textAlign = "center";
      ctx.fillText("step", pad.left + pw / 2, pad.top + ph + fontPx + 10);
      ctx.save();
      ctx.translate(16, pad.top + ph / 2);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText("loss", 0, 0);
      ctx.restore();
      // legend, top right
      const items = [["loss (each step)", accent, 0.35, []], ["smoothed", accent, 1, []],
        ["column selection", warn, 1, [3, 3]]];
      let y = 14;
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      for (const [label, color, alpha, dash] of items) {
        const x = width - pad.right - 170;
        ctx.strokeStyle = color;
        ctx.globalAlpha = alpha;
        ctx.lineWidth = 2;
        ctx.setLineDash(dash);
        ctx.beginPath();
        ctx.moveTo(x, y);
        ctx.lineTo(x + 26, y);
        ctx.stroke();
        ctx.setLineDash([]);
        ctx.globalAlpha = 1;
        ctx.fillStyle = fg;
        ctx.fillText(label, x + 32, y);
        y += fontPx + 6;
      }
    }
    return { step: p.step, loss: p.loss, smoothed: sm[i] };
  }

  /** The PNG: the same plot at 900 x 420 with a title, axis labels and a legend (the panel's canvas is bare). */
  exportCanvas() {
    const c = el("canvas", { width: "900", height: "420" });
    const ctx = c.getContext("2d");
    this._paint(ctx, 900, 420, { left: 70, right: 20, top: 80, bottom: 44 }, 13, true);
    return c;
  }

  _enableExport(on) {
    this.pngBtn.disabled = !on;
    this.csvBtn.disabled = !on;
  }

  download(kind) {
    if (!this.job) return;
    const name = `${this.job.name || "unziplora"}_loss.${kind}`;
    const href = kind === "png"
      ? this.exportCanvas().toDataURL("image/png")
      : URL.createObjectURL(new Blob([lossCSV(this.job)], { type: "text/csv" }));
    const a = el("a", { href, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    if (kind !== "png") setTimeout(() => URL.revokeObjectURL(href), 5000);
  }
}
