// UnZipLoRA Train Folder in the browser: the batches section of the UnZipLoRA sidebar tab (queue position,
// per-image and whole-batch ETA, cancel one / cancel all / resume all, a finished batch with its files) and the
// batch panel on the Train Folder node.

import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

import { BatchStore, batchCard, batchSection } from "./js/batches.js";
import { el } from "./js/format.js";
import { execIdOf, hideUiKeyInHistory, workflowIdOf } from "./js/graph.js";
import { JOB_EVENT } from "./js/live.js";
import { sidebarSections } from "./js/sidebar.js";

const NODE_TYPE = "UnZipLoRATrainFolder";
const BATCH_KEY = "unziplora_batch"; // the node's ui output: {unziplora_batch: [batch id]}
const PANEL_HEIGHT = 220;

const store = new BatchStore((path, init) => api.fetchApi(path, init));
const panels = new Set();

function toast(summary, detail) {
  const t = app.extensionManager?.toast;
  if (t?.add) t.add({ severity: "error", summary, detail, life: 6000 });
  else console.warn(`[UnZipLoRA] ${summary}: ${detail}`);
}

const attempt = (what, fn) => async (arg) => {
  try {
    await fn(arg);
  } catch (err) {
    toast(`UnZipLoRA: could not ${what}`, err.message);
  }
};

const actions = {
  cancelAll: attempt("cancel the batch", (batch) => store.cancelAll(batch)),
  resumeAll: attempt("resume the batch", (batch) => store.resumeAll(batch)),
  cancelJob: attempt("cancel the job", (job) => store.cancelJob(job)),
  fileURL: (job, kind) => api.apiURL(`/unziplora/jobs/${job.id}/files/${kind}`),
};

sidebarSections.push(batchSection(store, actions));
api.addEventListener(JOB_EVENT, () => store.soon());
api.addEventListener("reconnected", () => store.refresh());

function drawPanel(entry) {
  // the job records its node by execution id ("12:5" inside subgraph 12), as Train's panel looks it up
  const nodeId = execIdOf(app, entry.node) ?? entry.node.id;
  const batch = (entry.batchId && store.get(entry.batchId)) || store.latestForNode(nodeId, workflowIdOf(app));
  entry.element.replaceChildren(batch ? batchCard(batch, actions)
    : el("div", { class: "uzl-empty" }, "No batch yet: queue the workflow to train one pair per image of the folder."));
}

store.subscribe(() => panels.forEach(drawPanel));

hideUiKeyInHistory(api, BATCH_KEY); // a batch id, not a result file

app.registerExtension({
  name: "UnZipLoRA.TrainFolder",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== NODE_TYPE) return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const r = created?.apply(this, args);
      const element = el("div", { class: "uzl-batch-panel", "data-role": "batch-panel",
        style: `height: ${PANEL_HEIGHT - 10}px; overflow: auto;` });
      const entry = { node: this, element, batchId: null };
      const widget = this.addDOMWidget("unziplora_batch_panel", "unziplora-batch-panel", element, {
        serialize: false, getValue: () => "", setValue: () => {},
        getMinHeight: () => PANEL_HEIGHT, getMaxHeight: () => PANEL_HEIGHT,
      });
      widget.serialize = false;
      this.__unziploraBatch = entry;
      panels.add(entry);
      drawPanel(entry);
      return r;
    };
    const executed = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (output) {
      const r = executed?.apply(this, arguments);
      const entry = this.__unziploraBatch;
      const id = output?.[BATCH_KEY]?.[0];
      if (entry && id) {
        entry.batchId = id;
        store.refresh();
      }
      return r;
    };
    const removed = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function (...args) {
      if (this.__unziploraBatch) panels.delete(this.__unziploraBatch);
      return removed?.apply(this, args);
    };
  },

  async setup() {
    await store.refresh();
  },
});
