// What the pack does to every prompt the frontend queues (the panel's Train, the stock Run, a shortcut: the
// frontend's api.queuePrompt is the one way in). The pure parts are exported for `node --test tests/js`.

/** The ids of the nodes of `nodeType` a queued prompt will run: its partial-execution targets when it has them
 * (the panel's Train runs only its own branch), else every node of the prompt. */
export function queuedNodeIds(output, partialTargets, nodeType) {
  const ids = partialTargets?.length ? partialTargets.map(String) : Object.keys(output ?? {});
  return ids.filter((id) => output?.[id]?.class_type === nodeType);
}

/** Give each listed node of `nodeType` a fresh value under `key`, so ComfyUI's cache sees a changed input and runs
 * it again (the stock Run, without it, reuses an unchanged Train node's job: nodes/train_cache.py). */
export function forceRerun(output, ids, nodeType, key, token) {
  for (const id of ids ?? []) {
    const node = output?.[id];
    if (node?.class_type !== nodeType) continue;
    node.inputs = { ...(node.inputs ?? {}), [key]: token };
  }
}

/** ComfyUI runs the outputs that pass validation and leaves the others out with only a red outline (easy to miss
 * at a fitted zoom: Score without a CLIP Vision model). In a prompt with this pack's nodes, the toast's text that
 * says so; null when nothing was left out or the prompt has none of the pack's nodes. */
export function droppedOutputsText(output, res) {
  const errors = res?.node_errors;
  if (!res?.prompt_id || !errors || !Object.keys(errors).length) return null;
  if (!Object.values(output ?? {}).some((n) => String(n?.class_type ?? "").startsWith("UnZipLoRA"))) return null;
  const lines = Object.entries(errors).map(([id, e]) => {
    const first = e?.errors?.[0];
    const why = [first?.message, first?.details].filter(Boolean).join(": ");
    return `${e?.class_type ?? output?.[id]?.class_type ?? "node"} #${id}${why ? ` (${why})` : ""}`;
  });
  return `Left out because of: ${lines.join("; ")}`;
}

/**
 * Wrap api.queuePrompt: before(output, options) runs before the request (the new job's first event can arrive
 * before the request's answer) and returns what failed(...) gets back if the request throws; after(output, res)
 * runs on its answer. A hook that throws is logged and never stops the prompt.
 */
export function hookQueuePrompt(api, { before, after, failed }) {
  const original = api.queuePrompt;
  api.queuePrompt = async function (number, data, options, ...rest) {
    let marked;
    try {
      marked = before(data?.output, options);
    } catch (err) {
      console.warn("[UnZipLoRA] before queueing:", err);
    }
    try {
      const res = await original.call(this, number, data, options, ...rest);
      try {
        after(data?.output, res);
      } catch (err) {
        console.warn("[UnZipLoRA] after queueing:", err);
      }
      return res;
    } catch (err) {
      failed(marked);
      throw err;
    }
  };
}
