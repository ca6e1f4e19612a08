// Train Folder batches: the browser's copy of GET /unziplora/batches, and how a batch is drawn (sidebar section
// and the panel on the UnZipLoRA Train Folder node). No ComfyUI imports: the extension file wires them.

import { STATE_LABELS, basename, el, formatDuration, formatLoss, isActive } from "./format.js";

export class BatchStore {
  /** @param {(path: string, init?: RequestInit) => Promise<Response>} fetchApi */
  constructor(fetchApi) {
    this.fetchApi = fetchApi;
    this.batches = [];
    this.listeners = new Set();
    this._timer = null;
    this._inflight = null;
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  get(id) {
    return this.batches.find((b) => b.id === id);
  }

  /** The newest batch started by the node with this id (optionally in this workflow). */
  latestForNode(nodeId, workflowId) {
    return this.batches.find((b) => String(b.node_id ?? "") === String(nodeId)
      && (!workflowId || !b.workflow_id || b.workflow_id === workflowId));
  }

  async refresh() {
    if (this._inflight) return this._inflight;
    this._inflight = (async () => {
      try {
        const res = await this.fetchApi("/unziplora/batches");
        if (res.ok) this.batches = (await res.json()).batches ?? [];
      } catch (err) {
        console.warn("[UnZipLoRA] could not read the batches", err);
      } finally {
        this._inflight = null;
      }
      for (const fn of [...this.listeners]) fn();
    })();
    return this._inflight;
  }

  /** Job events arrive several times a second: one refresh per half second at most. */
  soon() {
    if (this._timer) return;
    this._timer = setTimeout(() => {
      this._timer = null;
      this.refresh();
    }, 500);
  }

  async post(path) {
    const res = await this.fetchApi(path, { method: "POST", headers: { "Content-Type": "application/json" },
      body: "{}" });
    let data = {};
    try {
      data = await res.json();
    } catch (err) {
      /* an empty answer */
    }
    await this.refresh();
    if (!res.ok) throw new Error(data?.error ?? `${path}: ${res.status}`);
    return data;
  }

  cancelAll(batch) {
    return this.post(`/unziplora/batches/${batch.id}/cancel`);
  }

  resumeAll(batch) {
    return this.post(`/unziplora/batches/${batch.id}/resume`);
  }

  cancelJob(job) {
    return this.post(`/unziplora/jobs/${job.id}/cancel`);
  }
}

function countsText(batch) {
  const order = ["running", "queued", "done", "cancelled", "failed", "interrupted", "cancelling"];
  return order.filter((s) => batch.counts?.[s]).map((s) => `${batch.counts[s]} ${STATE_LABELS[s] ?? s}`).join(" · ");
}

function itemRow(item, actions) {
  const job = item.job;
  const bits = [];
  if (job.state === "running" || job.state === "cancelling") bits.push(`${job.step}/${job.total}`);
  if (item.position) bits.push(`#${item.position} in queue`);
  if (isActive(job) && Number.isFinite(item.eta_s)) bits.push(`ends in ${formatDuration(item.eta_s)}`);
  if (job.state === "done" && job.loss != null) bits.push(`loss ${formatLoss(job.loss)}`);
  const files = job.state === "done" ? ["content", "style", "bundle"].filter((k) => job.outputs?.[k]) : [];
  return el("div", { class: "uzl-batch-item", "data-job": job.id, "data-state": job.state },
    el("span", { class: "uzl-chip", "data-state": job.state }, STATE_LABELS[job.state] ?? job.state),
    el("span", { class: "uzl-batch-file", title: job.name }, item.file),
    el("span", { class: "uzl-card-meta", "data-role": "item-meta" }, bits.join(" · ")),
    ...files.map((k) => el("a", {
      class: "uzl-file-name", "data-role": "file", href: actions.fileURL(job, k), title: basename(job.outputs[k]),
      download: basename(job.outputs[k]),
    }, k)),
    isActive(job) ? el("button", {
      class: "uzl-btn uzl-btn-small", type: "button", "data-action": "cancel-item", title: `Cancel ${item.file}`,
      disabled: job.state === "cancelling", onclick: () => actions.cancelJob(job),
    }, el("i", { class: "pi pi-times" })) : null);
}

/** One batch: head (name, counts, whole-batch ETA), Cancel all / Resume all, one row per image. */
export function batchCard(batch, actions, { compact = false } = {}) {
  const active = batch.state === "active";
  const head = el("div", { class: "uzl-card-head" },
    el("span", { class: "uzl-card-name", title: `batch ${batch.id}` },
      `${batch.name || "batch"} · ${batch.folder || ""} (${batch.items.length} images)`),
    el("span", { class: "uzl-chip", "data-state": active ? "running" : batch.state === "done" ? "done" : "cancelled" },
      active ? "running" : batch.state));
  const meta = [countsText(batch)];
  if (active) meta.push(Number.isFinite(batch.eta_s) ? `batch ends in ${formatDuration(batch.eta_s)}` : "ETA after the first steps");
  const buttons = [];
  if (active) {
    buttons.push(el("button", { class: "uzl-btn uzl-btn-small uzl-btn-danger", type: "button", "data-action": "cancel-all",
      onclick: () => actions.cancelAll(batch) }, "Cancel all"));
  } else if (batch.unfinished?.length) {
    buttons.push(el("button", { class: "uzl-btn uzl-btn-small", type: "button", "data-action": "resume-all",
      onclick: () => actions.resumeAll(batch) }, `Resume all (${batch.unfinished.length})`));
  }
  const rows = compact && !active ? [] : batch.items.map((it) => itemRow(it, actions));
  return el("div", { class: "uzl-card uzl-batch", "data-batch": batch.id, "data-state": batch.state },
    head,
    el("div", { class: "uzl-card-meta", "data-role": "batch-meta" }, meta.filter(Boolean).join(" · ")),
    rows.length ? el("div", { class: "uzl-batch-items" }, ...rows) : null,
    buttons.length ? el("div", { class: "uzl-card-actions" }, ...buttons) : null);
}

/** The sidebar's batch section: every batch, newest first (null when there is none). */
export function batchSection(store, actions) {
  return {
    subscribe: (fn) => store.subscribe(fn),
    render: () => {
      if (!store.batches.length) return null;
      return el("div", { class: "uzl-batches", "data-role": "batches" },
        el("div", { class: "uzl-side-subtitle" }, "Batches"),
        ...store.batches.map((b) => batchCard(b, actions)));
    },
  };
}
