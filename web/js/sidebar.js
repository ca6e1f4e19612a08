// The "UnZipLoRA" sidebar tab: every job the server knows, newest first, with state, progress and files.

import {
  STATE_LABELS,
  basename,
  el,
  formatClock,
  formatBytes,
  formatDuration,
  formatLoss,
  isActive,
  jobExtras,
  outputRows,
  percent,
} from "./format.js";

// Sections other modules draw above the job list ({render() -> Element|null, subscribe(fn) -> unsubscribe}):
// the Train Folder batches (unziplora_batches.js) add theirs here.
export const sidebarSections = [];

/**
 * @param {import("./store.js").JobStore} store
 * @param {object} actions {cancel(job), resume(job), locate(job) -> boolean, canLocate(job) -> boolean,
 *   deleteCheckpoints(job)}
 */
export function jobsSidebarTab(store, actions) {
  let unsubscribe = null;
  let container = null;

  const draw = () => {
    if (!container) return;
    const jobs = store.list();
    const list = el("div", { class: "uzl-joblist", "data-role": "joblist" });
    if (!jobs.length) {
      list.append(el("div", { class: "uzl-empty" },
        store.loaded ? "No training jobs yet. Add an UnZipLoRA Train node and press Train." : "Loading…"));
    }
    const resumed = new Set(jobs.map((j) => j.resumed_from).filter(Boolean));
    for (const job of jobs) list.append(jobCard(job, actions, resumed.has(job.id)));
    const sections = sidebarSections.map((section) => section.render()).filter(Boolean);
    container.replaceChildren(
      el("div", { class: "uzl-side" },
        el("div", { class: "uzl-side-head" },
          el("span", { class: "uzl-side-title" }, "UnZipLoRA jobs"),
          el("span", { class: "uzl-grow" }),
          el("button", {
            class: "uzl-btn uzl-btn-icon", type: "button", title: "Refresh from the server",
            onclick: () => store.refresh(),
          }, el("i", { class: "pi pi-refresh" }))),
        ...sections,
        list),
    );
  };

  return {
    id: "unziplora-jobs",
    icon: "pi pi-chart-line",
    title: "UnZipLoRA",
    // the label under the icon (1.58.1 shows label || title): a zero-width space lets a narrow sidebar break it
    // as "UnZip / LoRA" instead of inside the word ("UnZipLoR / A")
    label: "UnZip\u200bLoRA",
    tooltip: "UnZipLoRA training jobs",
    type: "custom",
    render: (node) => {
      container = node;
      unsubscribe?.();
      const offs = [store.subscribe(draw), ...sidebarSections.map((section) => section.subscribe(draw))];
      unsubscribe = () => offs.forEach((off) => off());
      draw();
      store.refresh();
    },
    destroy: () => {
      unsubscribe?.();
      unsubscribe = null;
      container = null;
    },
  };
}

function jobCard(job, actions, wasResumed) {
  const pct = percent(job);
  const title = `job ${job.id}${job.resumed_from ? `, resumed from job ${job.resumed_from}` : ""}`;
  const head = el("div", { class: "uzl-card-head" },
    el("span", { class: "uzl-card-name", title }, job.name),
    el("span", { class: "uzl-chip", "data-state": job.state }, STATE_LABELS[job.state] ?? job.state));

  const meta = [`${job.step} / ${job.total}`];
  if (job.resumed_from) meta.push("resumed");
  if (wasResumed) meta.push("continued by a newer job");
  if (job.loss !== null && job.loss !== undefined) meta.push(`loss ${formatLoss(job.loss)}`);
  if (job.state === "running" && job.eta_s) meta.push(`ETA ${formatDuration(job.eta_s)}`);
  meta.push(formatClock(job.created));
  if (job.info?.node_id) meta.push(`node #${job.info.node_id}`);

  // checkpoint_bytes / DELETE .../checkpoints come with newer servers: without them nothing is shown
  const extras = jobExtras(job);
  if (extras) meta.push(extras.meta);

  const buttons = [];
  if (isActive(job)) {
    buttons.push(el("button", {
      class: "uzl-btn uzl-btn-small uzl-btn-danger", type: "button", "data-action": "cancel",
      disabled: job.state === "cancelling", onclick: () => actions.cancel(job),
    }, "Cancel"));
  } else if (job.resumable && !wasResumed) {
    buttons.push(el("button", {
      class: "uzl-btn uzl-btn-small", type: "button", "data-action": "resume", onclick: () => actions.resume(job),
    }, "Resume"));
  }
  if (actions.canLocate(job)) {
    buttons.push(el("button", {
      class: "uzl-btn uzl-btn-small", type: "button", title: "Show the node on the canvas",
      onclick: () => actions.locate(job),
    }, el("i", { class: "pi pi-map-marker" }), "Node"));
  }

  if (extras && !isActive(job) && actions.deleteCheckpoints) {
    buttons.push(el("button", {
      class: "uzl-btn uzl-btn-small", type: "button", "data-action": "delete-checkpoints", title: extras.title,
      "aria-label": extras.title, onclick: () => actions.deleteCheckpoints(job),
    }, el("i", { class: "pi pi-trash" }), formatBytes(job.checkpoint_bytes)));
  }

  const files = job.state === "done" ? outputRows(job) : [];
  return el("div", { class: "uzl-card", "data-job": job.id, "data-state": job.state },
    head,
    el("div", { class: "uzl-bar uzl-bar-thin" }, el("div", { class: "uzl-fill", style: `width: ${pct.toFixed(1)}%` })),
    el("div", { class: "uzl-card-meta", "data-role": "steps" }, meta.filter(Boolean).join(" · ")),
    files.length ? el("div", { class: "uzl-files" },
      ...files.map(([label, path]) => el("div", { class: "uzl-file", title: path },
        el("span", { class: "uzl-file-kind" }, label),
        el("span", { class: "uzl-file-name", "data-role": "file" }, basename(path))))) : null,
    job.error && !isActive(job) && job.state !== "done" ? el("div", { class: "uzl-error" }, job.error) : null,
    buttons.length ? el("div", { class: "uzl-card-actions" }, ...buttons) : null,
  );
}
