// UnZipLoRA for ComfyUI: the panel on every "UnZipLoRA Train" node and the jobs sidebar tab.
//
// Training runs in a background job on the server. The node links to its job three ways:
//   - onExecuted(output): the node's ui dict carries output.unziplora_job = [job id];
//   - "unziplora.progress" websocket events (broadcast to every tab) carry the job, whose info.node_id and
//     info.workflow_id name the node, and the workflow, that started it (node ids repeat across workflows);
//   - GET /unziplora/jobs on load and on reconnect: each node shows the newest job it started, so a page
//     reload or a second tab shows the same panel.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

import { jobsSidebarTab } from "./js/sidebar.js";
import { JobStore } from "./js/store.js";
import { TrainPanel } from "./js/panel.js";
import { viewQuery } from "./js/format.js";
import { addUseGraph } from "./js/usegraph.js";
import { execIdOf as execIdIn, hideUiKeyInHistory, nodeForExecId as nodeIn, rootGraph as rootGraphOf, workflowIdOf }
  from "./js/graph.js";
import { listenForJobs } from "./js/live.js";
import { droppedOutputsText, forceRerun, hookQueuePrompt, queuedNodeIds } from "./js/queue_hook.js";

const NODE_TYPE = "UnZipLoRATrain";
const PANEL_MARGIN = 8; // graph units around the panel inside the node

const store = new JobStore((path, init) => api.fetchApi(path, init));
const entries = new Set(); // {node, panel, jobId, pending, pendingFrom}

function loadStyles() {
  const href = new URL("./unziplora.css", import.meta.url).href;
  if (document.querySelector(`link[data-unziplora-css]`)) return;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = href;
  link.dataset.unziploraCss = "";
  document.head.append(link);
}

// ---- graph helpers ----------------------------------------------------------------------------------------

const rootGraph = () => rootGraphOf(app);
const execIdOf = (node) => execIdIn(app, node);
const workflowId = () => workflowIdOf(app);

/** Whether a job was started from the open workflow (jobs recorded without a workflow id match any). */
function fromThisWorkflow(job) {
  const wid = job?.info?.workflow_id;
  const here = workflowId();
  return !wid || !here || wid === here;
}

/** The train node in the open workflow that started this job, or null. */
function nodeForJob(job) {
  return fromThisWorkflow(job) ? nodeForExecId(job?.info?.node_id) : null;
}

const nodeForExecId = (execId) => nodeIn(app, execId);

function redraw() {
  if (app.canvas?.setDirty) app.canvas.setDirty(true, true);
  else app.graph?.setDirtyCanvas?.(true, true);
}

function toast(severity, summary, detail, life = 5000) {
  const t = app.extensionManager?.toast;
  if (t?.add) t.add({ severity, summary, detail, life });
}

// ---- node <-> job ----------------------------------------------------------------------------------------

/** Show the node's job: the one it was told about, unless the server knows a newer one it started. */
function bind(entry) {
  const execId = execIdOf(entry.node);
  let job = entry.jobId ? store.get(entry.jobId) : undefined;
  if (entry.jobId && !job && store.loaded && !store.refreshing) entry.jobId = null; // gone from the server
  if (job && !fromThisWorkflow(job)) {
    job = undefined;
    entry.jobId = null;
  }
  const latest = execId !== null ? store.latestForNode(execId, fromThisWorkflow) : undefined;
  if (latest && (!job || (latest.created || 0) > (job.created || 0))) job = latest;
  if (job && job.id !== entry.jobId) entry.jobId = job.id;
  if (entry.pending && entry.jobId && entry.jobId !== entry.pendingFrom) {
    entry.pending = false;
    entry.resumeStep = null;
    entry.panel.note = null;
    entry.panel.pending = null;
  }
  entry.panel.setJob(job);
}

/**
 * A panel whose node left the graph. Nodes 2.0 (frontend 1.32.9) can go on showing it in place of the node
 * with the same id in the graph loaded next (its node component is reused by id), so while the panel is on
 * the page it follows that node; once it is off the page it is dropped. True when the entry is usable.
 */
function adopt(entry) {
  if (entry.node.graph && !entry.removed) return true;
  if (!entry.panel.element.isConnected) {
    entry.observer?.disconnect();
    entries.delete(entry);
    return false;
  }
  const heir = nodeForExecId(entry.node.id);
  if (!heir || heir === entry.node || heir.type !== entry.node.type) return false;
  entry.node = heir;
  entry.removed = false;
  entry.jobId = null;
  return true;
}

function bindAll() {
  for (const entry of [...entries]) {
    if (adopt(entry)) bind(entry);
  }
  redraw();
}

store.subscribe(bindAll);

// A job that just finished wrote LoRA files: the LoRA lists of every loader (ours and the stock ones) learn them
// without the user pressing R.
const finished = new Set();
store.subscribe(() => {
  let fresh = false;
  for (const job of store.list()) {
    if (job.state !== "done" || finished.has(job.id)) continue;
    finished.add(job.id);
    if (store.loaded && seenActive.has(job.id)) fresh = true;
  }
  for (const job of store.list()) if (job.state !== "done") seenActive.add(job.id);
  if (fresh) refreshModelLists();
});
const seenActive = new Set();

let refreshing = null;
async function refreshModelLists() {
  if (refreshing) return refreshing;
  refreshing = (async () => {
    try {
      if (typeof app.refreshComboInNodes === "function") await app.refreshComboInNodes();
      else await app.extensionManager?.command?.execute?.("Comfy.RefreshNodeDefinitions");
    } catch (err) {
      console.warn("[UnZipLoRA] could not refresh the model lists:", err?.message ?? err);
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

/** Mark the panels of the train nodes a prompt will run as queued, whoever queued it. */
function markQueued(output, partialTargets) {
  const marked = [];
  for (const id of queuedNodeIds(output, partialTargets, NODE_TYPE)) {
    const entry = nodeForExecId(id)?.__unziplora;
    if (!entry) continue;
    if (!entry.pending) {
      entry.pending = true;
      entry.pendingFrom = entry.jobId ?? null;
      entry.resumeStep = null;
    }
    entry.panel.note = { text: "Queued: ComfyUI runs this node (prompts, image, model copy), then the job starts.",
      kind: "info" };
    entry.panel.setPending("queued");
    marked.push(entry);
  }
  return marked;
}

// The train node's ui output ({unziplora_job: [id]}) links the panel to its job; the queue panel would list it
// as a result file.
const JOB_KEY = "unziplora_job";
hideUiKeyInHistory(api, JOB_KEY);

// The panel's Train button trains again even when nothing changed: the train node gets a fresh value under this
// key in the prompt it queues (the stock Run reuses an unchanged node's job).
const FORCE_KEY = "unziplora_train";
let forceTrain = null; // exec ids the next queued prompt trains again

hookQueuePrompt(api, {
  before(output, options) {
    const token = `${Date.now().toString(36)}${Math.random().toString(36).slice(2)}`;
    forceRerun(output, forceTrain, NODE_TYPE, FORCE_KEY, token);
    forceTrain = null;
    return markQueued(output, options?.partialExecutionTargets);
  },
  after(output, res) {
    const text = droppedOutputsText(output, res);
    if (text) toast("warn", "Part of the workflow was not run", text, 15000);
  },
  failed(marked) {
    for (const entry of marked ?? []) {
      stopPending(entry);
      entry.panel.setNote(null);
    }
  },
});

async function train(entry) {
  adopt(entry);
  const execId = execIdOf(entry.node);
  try {
    // only this node's branch: other outputs in the workflow are not run by Train
    forceTrain = execId ? [String(execId)] : null;
    try {
      await app.queuePrompt(0, 1, execId ? [execId] : undefined);
    } finally {
      forceTrain = null;
    }
    // queuePrompt's boolean is unreliable (1.32.9 answers false for an empty node_errors {}): read the errors
    const nodeErrors = app.lastNodeErrors ?? {};
    if (Object.keys(nodeErrors).length) {
      stopPending(entry);
      const errors = nodeErrors[execId]?.errors ?? [];
      const detail = errors.map((e) => [e.message, e.details].filter(Boolean).join(": ")).join("; ");
      entry.panel.setNote(`Not queued${detail ? `: ${detail}` : ": see the errors marked on the graph"}`, "error");
    }
  } catch (err) {
    stopPending(entry);
    entry.panel.setNote(`Not queued: ${err?.message ?? err}`, "error");
  }
}

function stopPending(entry) {
  entry.pending = false;
  entry.panel.pending = null;
}

async function cancel(job, entry) {
  if (entry) entry.panel.busy = true;
  try {
    await store.cancel(job.id);
  } catch (err) {
    toast("error", "UnZipLoRA: cancel failed", err.message);
    entry?.panel.setNote(`Cancel failed: ${err.message}`, "error");
  } finally {
    if (entry) {
      entry.panel.busy = false;
      entry.panel.render();
    }
  }
}

async function resume(job, entry) {
  if (entry) {
    entry.panel.busy = true;
    entry.pending = true;
    entry.pendingFrom = entry.jobId ?? null;
    entry.panel.pending = "queued";
    entry.resumeStep = job.checkpoint_step ?? job.step ?? 0; // the server reads the checkpoint's step
    entry.panel.setNote(`Resuming ${job.name} from step ${entry.resumeStep}…`);
  }
  try {
    await store.resume(job.id, api.clientId ?? api.initialClientId ?? null);
  } catch (err) {
    toast("error", "UnZipLoRA: resume failed", err.message);
    if (entry) {
      stopPending(entry);
      entry.panel.setNote(`Resume failed: ${err.message}`, "error");
    }
  } finally {
    if (entry) {
      entry.panel.busy = false;
      entry.panel.render();
    }
  }
}

function entryForJob(job) {
  return nodeForJob(job)?.__unziplora;
}

function attachPanel(node) {
  if (node.__unziplora) return;
  const entry = { node, panel: null, jobId: null, pending: false, pendingFrom: null };
  entry.panel = new TrainPanel({
    train: () => train(entry),
    cancel: (job) => cancel(job, entry),
    resume: (job) => resume(job, entry),
    useIt: (job, step) => useIt(job, entry, step),
    viewURL: (preview) => api.apiURL(viewQuery(preview)),
  });
  const widget = node.addDOMWidget("unziplora_panel", "unziplora-panel", entry.panel.element, {
    serialize: false,
    getValue: () => "",
    setValue: () => {},
    margin: PANEL_MARGIN,
    // min = max: the slot is the panel's fixed height, so the node keeps one size whatever the panel shows
    getMinHeight: () => entry.panel.height(PANEL_MARGIN),
    getMaxHeight: () => entry.panel.height(PANEL_MARGIN),
  });
  widget.serialize = false; // not in the saved workflow's widgets_values either
  entry.widget = widget;
  node.__unziplora = entry;
  entries.add(entry);

  if (typeof ResizeObserver !== "undefined") {
    // the plot follows the panel's width (the node resized, or first laid out)
    const observer = new ResizeObserver(() => entry.panel.plot.draw());
    observer.observe(entry.panel.inner);
    entry.observer = observer;
  }
  legibleSmallFloats(node);
  bind(entry);
}

/** Nodes 2.0 shows FLOAT widgets with PrimeVue's InputNumber, which rounds to 3 decimals unless told otherwise
 * (lr 5e-05 showed as 0); the classic canvas uses the widget's precision and is unaffected. */
function legibleSmallFloats(node) {
  for (const w of node.widgets ?? []) {
    const step = w.options?.step2 ?? w.options?.step;
    if (w.type !== "number" || !(step > 0 && step < 1e-3)) continue;
    w.options.minFractionDigits = 0;
    w.options.maxFractionDigits = Math.min(20, Math.max(8, w.options.precision ?? 0));
  }
}

async function useIt(job, entry, step = null) {
  try {
    await refreshModelLists(); // the loader's list must hold the new bundle
    const nodes = addUseGraph(app, entry.node, job, step);
    redraw();
    // Nodes 2.0 draws the new nodes on the next frames: lay them out again with the sizes they got
    await new Promise((resolve) => setTimeout(resolve, 300));
    nodes.layout();
    redraw();
    toast("success", "UnZipLoRA", `Added a graph that samples with ${job.name} (queue it with Run).`);
    return nodes;
  } catch (err) {
    console.warn("[UnZipLoRA] could not add the graph:", err);
    entry.panel.setNote(`Could not add the graph: ${err?.message ?? err}`, "error");
    return null;
  }
}

function detachPanel(node) {
  const entry = node.__unziplora;
  if (entry?.node === node) entry.removed = true; // dropped by adopt() once its element is off the page
}

function chain(proto, name, fn) {
  const original = proto[name];
  proto[name] = function (...args) {
    const result = original?.apply(this, args);
    fn.apply(this, args);
    return result;
  };
}

// ---- websocket + polling ---------------------------------------------------------------------------------

listenForJobs(api, store, {
  executing(execId) {
    const entry = nodeForExecId(execId)?.__unziplora;
    if (!entry?.pending) return;
    const what = entry.resumeStep !== null && entry.resumeStep !== undefined
      ? `Resuming from step ${entry.resumeStep}` : "Preparing";
    entry.panel.note = { text: `${what}: encoding the prompts and the image, copying the model…`, kind: "info" };
    entry.panel.setPending("preparing");
  },
  error(detail) {
    const entry = nodeForExecId(detail.node_id)?.__unziplora;
    if (!entry) return;
    stopPending(entry);
    entry.panel.setNote(`Not started: ${detail.exception_message ?? detail.exception_type ?? "error"}`, "error");
  },
  cached(execIds) {
    for (const id of execIds) {
      const entry = nodeForExecId(id)?.__unziplora;
      if (!entry?.pending) continue;
      stopPending(entry);
      // an unchanged Train node is answered from the cache on purpose (nodes/train_cache.py): no new job
      entry.panel.setNote("Unchanged since the last run: ComfyUI reused its job. Train trains again.");
    }
  },
  interrupted() {
    for (const entry of entries) {
      if (!entry.pending) continue;
      stopPending(entry);
      entry.panel.setNote("Interrupted before the job started.", "error");
    }
  },
});

// ---- the extension ---------------------------------------------------------------------------------------

loadStyles();

app.registerExtension({
  name: "UnZipLoRA.TrainPanel",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    chain(nodeType.prototype, "onNodeCreated", function () {
      attachPanel(this);
      // a new node keeps its seed: with "randomize" every Run would be a changed input, i.e. a new training job
      // (a loaded workflow sets its own value after this)
      const control = this.widgets?.find((w) => w.name === "control_after_generate");
      if (control) control.value = "fixed";
    });
    chain(nodeType.prototype, "onExecuted", function (output) {
      const entry = this.__unziplora;
      const jobId = output?.unziplora_job?.[0];
      if (!entry || !jobId) return;
      if (entry.pending && jobId === entry.pendingFrom) {
        // ComfyUI answered the node from its cache (or the node found its unchanged job): no new job
        entry.pending = false;
        entry.panel.pending = null;
        entry.panel.note = { text: `Unchanged since job ${jobId}: Run used its LoRAs. Train trains again.`,
          kind: "info" };
      }
      entry.jobId = jobId;
      if (!store.get(jobId)) store.refresh();
      else bind(entry);
    });
    chain(nodeType.prototype, "onAdded", function () {
      // added to a graph (its id is final): show the newest job the server knows for it
      if (this.__unziplora) bind(this.__unziplora);
    });
    chain(nodeType.prototype, "onRemoved", function () {
      detachPanel(this);
    });
  },

  loadedGraphNode(node) {
    // ids are final once a workflow is configured: pick up the node's jobs (and hand panels still on the page
    // to their heirs, see adopt)
    if (node.__unziplora) bindAll();
  },

  async setup() {
    const sidebar = jobsSidebarTab(store, {
      cancel: (job) => cancel(job, entryForJob(job)),
      resume: (job) => resume(job, entryForJob(job)),
      deleteCheckpoints: async (job) => {
        try {
          await store.deleteCheckpoints(job.id);
        } catch (err) {
          toast("error", "UnZipLoRA: could not delete the checkpoints", err.message);
        }
      },
      canLocate: (job) => {
        const node = nodeForJob(job);
        return !!node?.__unziplora && node.graph === app.canvas?.graph;
      },
      locate: (job) => {
        const node = nodeForJob(job);
        if (!node) return false;
        app.canvas.selectNode?.(node);
        app.canvas.centerOnNode?.(node);
        redraw();
        return true;
      },
    });
    const manager = app.extensionManager;
    if (manager?.sidebarTab?.registerSidebarTab) manager.sidebarTab.registerSidebarTab(sidebar);
    else manager?.registerSidebarTab?.(sidebar);
    await store.refresh();
  },
});
