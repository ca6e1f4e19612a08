// Finding things in the open workflow, shared by the Train panel (unziplora.js) and the Train Folder batch panel
// (unziplora_batches.js): the server records a job's node as its execution id and the workflow's id, and both
// panels look their node up the same way.

export const NIL_ID = "00000000-0000-0000-0000-000000000000"; // litegraph's "no id" (graphs made by loadApiJson)

export function rootGraph(app) {
  return app.rootGraph ?? app.graph;
}

/** The node's execution id ("3", or "12:3" for a node inside subgraph node 12), or null if not in the graph. */
export function execIdOf(app, node) {
  const root = rootGraph(app);
  if (!root || !node?.graph) return null;
  const search = (graph, prefix, depth) => {
    for (const n of graph.nodes ?? graph._nodes ?? []) {
      if (n === node) return prefix + String(n.id);
      if (n.subgraph && depth < 8) {
        const found = search(n.subgraph, `${prefix}${n.id}:`, depth + 1);
        if (found) return found;
      }
    }
    return null;
  };
  return search(root, "", 0);
}

/** The open workflow's id: the frontend sends it with every prompt (extra_pnginfo.workflow.id). */
export function workflowIdOf(app) {
  const id = rootGraph(app)?.id;
  return id && id !== NIL_ID ? id : null;
}

/** The node with this execution id in the open workflow, or null. */
export function nodeForExecId(app, execId) {
  let graph = rootGraph(app);
  if (!graph || execId === undefined || execId === null) return null;
  const parts = String(execId).split(":");
  let node = null;
  for (let i = 0; i < parts.length; i++) {
    node = graph?.getNodeById?.(parts[i]) ?? null;
    if (!node) return null;
    if (i < parts.length - 1) graph = node.subgraph;
  }
  return node;
}

const hiddenKeys = new Set();

/** Keeps a node's ui output key (a job or batch id, not a file) out of the queue panel, which (1.32.9) lists
 * every ui key of the history as a result file: the history the queue reads is the only place it is dropped. */
export function hideUiKeyInHistory(api, key) {
  hiddenKeys.add(key);
  if (typeof api.getHistory !== "function" || api.getHistory.__unziplora) return;
  const originalGetHistory = api.getHistory;
  const wrapped = async function (...args) {
    const data = await originalGetHistory.apply(this, args);
    try {
      // 1.32: {History: [...]}; 1.58: a list of jobs, whose outputs (where present) are tidied the same way
      for (const item of Array.isArray(data) ? data : data?.History ?? []) {
        for (const out of Object.values(item?.outputs ?? {})) {
          if (!out || typeof out !== "object") continue;
          for (const k of hiddenKeys) delete out[k];
        }
      }
    } catch (err) {
      console.warn("[UnZipLoRA] could not tidy the history:", err);
    }
    return data;
  };
  wrapped.__unziplora = true;
  api.getHistory = wrapped;
}
