// The panel shown on every UnZipLoRA Train node: Train / Cancel / Resume, progress, loss, previews, files.
// Pure DOM; the extension (../unziplora.js) owns the ComfyUI side and calls render().

import {
  STATE_LABELS,
  basename,
  el,
  formatDuration,
  formatLoss,
  formatSpeed,
  isActive,
  latestPreviews,
  outputRows,
  percent,
  shortDir,
} from "./format.js";
import { LossPlot } from "./plot.js";

// The panel's height never changes (graph units): the node is sized once and stays that size across runs,
// reloads and both renderers; what a state does not use stays blank rather than collapsing.
export const PANEL_HEIGHT = 452;

const PENDING_LABELS = { queued: "queued", preparing: "preparing…" };

export class TrainPanel {
  /**
   * @param {object} actions  {train(), cancel(job), resume(job), useIt(job, step?), viewURL(preview) -> string}
   */
  constructor(actions) {
    this.actions = actions;
    this.job = null;
    this.note = null; // {text, kind: "info" | "error"} shown under the header (queueing, request errors)
    this.pending = null; // "queued" | "preparing": a run of this node is on its way; the old job is not shown
    this.busy = false;

    this.trainBtn = el("button", {
      class: "uzl-btn uzl-btn-primary",
      type: "button",
      "data-action": "train",
      title: "Queue this node: it prepares the inputs, starts a background job and frees the queue",
      onclick: () => this.actions.train(),
    }, el("i", { class: "pi pi-play" }), "Train");
    this.cancelBtn = el("button", {
      class: "uzl-btn uzl-btn-danger",
      type: "button",
      "data-action": "cancel",
      title: "Stop at the next step; a checkpoint is kept so the job can be resumed",
      onclick: () => this.job && this.actions.cancel(this.job),
    }, el("i", { class: "pi pi-stop" }), "Cancel");
    this.resumeBtn = el("button", {
      class: "uzl-btn",
      type: "button",
      "data-action": "resume",
      title: "Continue from the last checkpoint with the same graph",
      onclick: () => this.job && this.actions.resume(this.job),
    }, el("i", { class: "pi pi-replay" }), "Resume");

    this.stateChip = el("span", { class: "uzl-chip", "data-role": "state" });
    this.jobLabel = el("span", { class: "uzl-job", "data-role": "job" });
    this.noteBox = el("div", { class: "uzl-note", "data-role": "note" });

    this.fill = el("div", { class: "uzl-fill" });
    this.stepsText = el("span", { class: "uzl-steps", "data-role": "steps" });
    this.progressRow = el("div", { class: "uzl-progress" }, el("div", { class: "uzl-bar" }, this.fill), this.stepsText);

    this.lossText = el("span", { class: "uzl-loss", "data-role": "loss" });
    this.speedText = el("span", { class: "uzl-speed", "data-role": "speed" });
    this.etaText = el("span", { class: "uzl-eta", "data-role": "eta" });
    this.statsRow = el("div", { class: "uzl-stats" }, this.lossText, el("span", { class: "uzl-grow" }), this.speedText,
      this.etaText);

    this.plot = new LossPlot(104);
    this.previewRow = el("div", { class: "uzl-previews", "data-role": "previews" });
    // over the strip (the panel never changes height): browse the preview steps, use one whose LoRAs were saved
    this.previewStep = null; // the step shown; null: the latest
    this.stepLabel = el("span", { class: "uzl-step-label", "data-role": "preview-step" });
    const stepBtn = (dir, icon, title) => el("button", { class: "uzl-btn uzl-btn-small", type: "button", title,
      "data-action": `preview-${dir}`, onclick: () => this._moveStep(dir === "next" ? 1 : -1) },
    el("i", { class: `pi ${icon}` }));
    this.prevBtn = stepBtn("prev", "pi-chevron-left", "Earlier previews");
    this.nextBtn = stepBtn("next", "pi-chevron-right", "Later previews");
    this.useStepBtn = el("button", {
      class: "uzl-btn uzl-btn-primary uzl-btn-small", type: "button", "data-action": "use-step",
      title: "Add a graph that samples with the LoRAs saved at this step (save_every)",
      onclick: () => this.job && this._shownStep && this.actions.useIt?.(this.job, this._shownStep),
    }, "use this step");
    this.stepBar = el("div", { class: "uzl-stepbar", "data-role": "stepbar" }, this.prevBtn, this.stepLabel,
      this.nextBtn, this.useStepBtn);
    this.filesList = el("div", { class: "uzl-files-list" });
    this.whereText = el("div", { class: "uzl-where", "data-role": "where" });
    this.useBtn = el("button", {
      class: "uzl-btn uzl-btn-primary uzl-btn-small",
      type: "button",
      "data-action": "use",
      title: "Add a Loader -> Apply -> Prompts -> KSampler group for these files to the canvas, with the trained prompts",
      onclick: () => this.job && this.actions.useIt?.(this.job),
    }, el("i", { class: "pi pi-plus" }), "Use it");
    this.filesBox = el("div", { class: "uzl-files", "data-role": "files" },
      el("div", { class: "uzl-files-head" }, el("span", { class: "uzl-muted" }, "Files"), el("span", { class: "uzl-grow" }),
        this.useBtn),
      this.filesList, this.whereText);
    this.errorBox = el("div", { class: "uzl-error", "data-role": "error" });

    this.inner = el(
      "div",
      { class: "uzl-panel" },
      el("div", { class: "uzl-head" }, this.trainBtn, this.stateChip, this.jobLabel, el("span", { class: "uzl-grow" }),
        this.cancelBtn, this.resumeBtn),
      this.noteBox,
      this.progressRow,
      this.statsRow,
      this.plot.element,
      this.previewRow,
      this.filesBox,
      this.errorBox,
    );
    // ComfyUI sizes the outer element to the widget's slot; the inner one has the fixed panel height.
    this.element = el("div", { class: "uzl-root" }, this.inner);
    this.inner.style.height = `${PANEL_HEIGHT}px`;
    this._previewKey = "";
    this.render();
  }

  /** The slot the DOM widget asks for, in graph units: fixed, so the node never grows with what it shows. */
  height(margin = 0) {
    return PANEL_HEIGHT + 2 * margin + 2;
  }

  /** A run of this node was queued ("queued") or started executing ("preparing"); null when it is over. */
  setPending(kind) {
    this.pending = kind || null;
    this.render();
  }

  setJob(job) {
    if ((job?.id ?? null) !== (this.job?.id ?? null)) this.previewStep = null;
    this.job = job || null;
    this.render();
  }

  setNote(text, kind = "info") {
    this.note = text ? { text, kind } : null;
    this.render();
  }

  render() {
    // while a new run is on its way the previous job's bar, plot, previews and files are not shown
    const job = this.pending ? null : this.job;
    const state = this.pending ?? (job ? job.state : "idle");
    this.inner.dataset.state = state;
    this.inner.dataset.jobId = job ? job.id : "";

    // header
    this.stateChip.textContent = this.pending ? PENDING_LABELS[this.pending]
      : job ? STATE_LABELS[job.state] ?? job.state : "not trained";
    this.stateChip.dataset.state = state;
    this.jobLabel.textContent = job ? job.name : "";
    this.jobLabel.title = job
      ? `job ${job.id}${job.resumed_from ? ` (resumed from ${job.resumed_from})` : ""} · mode ${job.info?.mode ?? "?"}`
      : "";
    show(this.cancelBtn, isActive(job));
    this.cancelBtn.disabled = this.busy || job?.state === "cancelling";
    show(this.resumeBtn, !!job?.resumable && !isActive(job));
    this.resumeBtn.disabled = this.busy;

    // note: queueing messages, request errors; a hint when there is no job yet
    // a resumed job before its first new step: it loads the checkpoint (info.resumed_at_step, set when queued)
    const resuming = job && isActive(job) && job.resumed_from && job.step === job.info?.resumed_at_step
      ? `Resuming from step ${job.step}: loading the checkpoint…` : null;
    const activity = job && isActive(job) ? job.info?.activity ?? resuming : null;
    const note = this.note ?? (activity ? { text: activity, kind: "info" } : null)
      ?? (job || this.pending ? null : { text: "Train (or Run) queues this node; the run continues in the background.", kind: "hint" });
    show(this.noteBox, !!note);
    this.noteBox.textContent = note ? note.text : "";
    this.noteBox.dataset.kind = note ? note.kind : "";

    // progress
    show(this.progressRow, !!job);
    if (job) {
      const pct = percent(job);
      this.fill.style.width = `${pct.toFixed(1)}%`;
      this.stepsText.textContent = `${job.step} / ${job.total || "?"}`;
      this.stepsText.title = `${pct.toFixed(0)}%`;
    }

    // loss, speed, ETA, plot
    show(this.statsRow, !!job && (job.loss !== null && job.loss !== undefined));
    this.plot.setJob(job);
    if (job) {
      this.lossText.replaceChildren(el("span", { class: "uzl-muted" }, "loss "), formatLoss(job.loss));
      this.speedText.textContent = formatSpeed(job.it_per_s);
      const eta = isActive(job) && job.state === "running" ? formatDuration(job.eta_s) : "";
      this.etaText.textContent = eta ? `ETA ${eta}` : job.started && job.finished
        ? `took ${formatDuration(job.finished - job.started)}` : "";
    }

    this._renderPreviews(job);

    // files when done
    const rows = job?.state === "done" ? outputRows(job) : [];
    show(this.filesBox, rows.length > 0);
    this.filesList.replaceChildren(
      ...rows.map(([label, path]) =>
        el("div", { class: "uzl-file", title: path },
          el("span", { class: "uzl-file-kind" }, label),
          el("span", { class: "uzl-file-name", "data-role": "file" }, basename(path)))),
    );
    const dirs = [...new Set(rows.map(([, path]) => shortDir(path)))];
    this.whereText.textContent = dirs.length ? `in ${dirs.join(" and ")}` : "";
    this.whereText.title = rows.map(([label, path]) => `${label}: ${path}`).join("\n");
    this.useBtn.hidden = !this.actions.useIt;

    // error; else the job's GPU-memory warning (training/vram.py: the card cannot hold a prompt beside it)
    const error = job?.state === "failed" || job?.state === "interrupted" ? job.error : job?.info?.gpu_warning ?? null;
    show(this.errorBox, !!error);
    this.errorBox.textContent = error || "";
  }

  _previewSteps(job) {
    return [...new Set((job?.previews ?? []).map((p) => p?.step).filter((s) => Number.isFinite(s)))].sort((a, b) => a - b);
  }

  _moveStep(delta) {
    const steps = this._previewSteps(this.job);
    if (!steps.length) return;
    const at = steps.indexOf(this._shownStep ?? steps[steps.length - 1]);
    const next = steps[Math.max(0, Math.min(steps.length - 1, at + delta))];
    this.previewStep = next === steps[steps.length - 1] ? null : next;
    this.render();
  }

  _renderPreviews(job) {
    const steps = this._previewSteps(job);
    const shown = steps.includes(this.previewStep) ? this.previewStep : steps[steps.length - 1] ?? null;
    this._shownStep = shown;
    const previews = latestPreviews(shown === null ? job?.previews : job.previews.filter((p) => p?.step === shown));
    const saved = shown !== null && !!job?.info?.step_files?.[String(shown)];
    show(this.stepBar, steps.length > 1 || saved);
    this.stepLabel.textContent = shown !== null ? `step ${shown}` : "";
    this.prevBtn.disabled = !steps.length || shown === steps[0];
    this.nextBtn.disabled = !steps.length || shown === steps[steps.length - 1];
    show(this.useStepBtn, saved);
    const key = previews.map((p) => `${p.kind}/${p.subfolder}/${p.filename}`).join("|");
    show(this.previewRow, previews.length > 0);
    if (key === this._previewKey) return; // no reload flicker on every progress event
    this._previewKey = key;
    this.previewRow.replaceChildren(this.stepBar,
      ...previews.map((p) => {
        const url = this.actions.viewURL(p);
        const caption = p.step ? `${p.kind} · ${p.step}` : p.kind;
        return el("a", { class: "uzl-thumb", href: url, target: "_blank", rel: "noopener", title: `${caption}\n${p.filename}` },
          el("img", { src: url, alt: p.kind || "preview", loading: "lazy", draggable: "false" }),
          el("span", { class: "uzl-thumb-label" }, p.kind || "preview"));
      }),
    );
  }
}

function show(node, visible) {
  node.hidden = !visible;
}
