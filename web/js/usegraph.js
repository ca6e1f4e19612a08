// "Use it": a ready graph for a finished job, added next to its train node:
//   UnZipLoRA Loader -> UnZipLoRA Apply (both) -> KSampler <- UnZipLoRA Prompts (the trained prompts)
//   -> VAE Decode -> Save Image, fed by the same MODEL / CLIP / VAE as the train node, in a group of its own.

import { basename } from "./format.js";

/** Where the train node's input `name` comes from: [origin node, origin slot], or null. */
function upstream(graph, node, name) {
  const slot = node.inputs?.find((i) => i.name === name);
  if (!slot || slot.link === null || slot.link === undefined) return null;
  const link = graph.links?.get?.(slot.link) ?? graph.links?.[slot.link];
  if (!link) return null;
  const origin = graph.getNodeById(link.origin_id);
  return origin ? [origin, link.origin_slot] : null;
}

function setWidget(node, name, value) {
  const w = node.widgets?.find((x) => x.name === name);
  if (!w) return;
  w.value = value;
  w.callback?.(value);
}

function config(job) {
  const cfg = job?.info?.config;
  if (typeof cfg !== "string") return cfg || {};
  try {
    return JSON.parse(cfg);
  } catch {
    return {};
  }
}

/** Builds the graph; returns {loader, apply, prompts, sampler, decode, save, latent, group}. */
export function addUseGraph(app, trainNode, job, step = null) {
  const LG = window.LiteGraph;
  const graph = trainNode.graph;
  const model = upstream(graph, trainNode, "model");
  const clip = upstream(graph, trainNode, "clip");
  const vae = upstream(graph, trainNode, "vae");
  if (!model || !clip || !vae) throw new Error("connect the train node's model, clip and vae first");
  // step: the LoRAs saved at that step (save_every) rather than the run's final ones
  const saved = step !== null && step !== undefined ? job.info?.step_files?.[String(step)] : null;
  if (step !== null && step !== undefined && !saved) throw new Error(`job ${job.id} saved no LoRAs at step ${step}`);
  const bundle = saved ? saved.bundle : basename(job.outputs?.bundle || job.info?.planned_outputs?.bundle || "");
  if (!bundle) throw new Error(`job ${job.id} has no bundle file`);
  const label = saved ? `${job.name} step ${step}` : job.name;

  const make = (type) => {
    const n = LG.createNode(type);
    if (!n) throw new Error(`node type ${type} is not available`);
    graph.add(n);
    return n;
  };
  const loader = make("UnZipLoRALoader");
  const apply = make("UnZipLoRAApply");
  const prompts = make("UnZipLoRAPrompts");
  const latent = make("EmptyLatentImage");
  const sampler = make("KSampler");
  const decode = make("VAEDecode");
  const save = make("SaveImage");

  setWidget(loader, "bundle", bundle);
  setWidget(apply, "mode", "both");
  const info = job.info || {};
  setWidget(prompts, "prompt", info.prompt || "");
  setWidget(prompts, "content_prompt", info.content_prompt || "");
  setWidget(prompts, "style_prompt", info.style_prompt || "");
  setWidget(prompts, "negative_prompt", "blurry, low quality");
  const res = config(job).resolution || 1024;
  setWidget(latent, "width", res);
  setWidget(latent, "height", res);
  setWidget(sampler, "control_after_generate", "fixed");
  setWidget(save, "filename_prefix", `unziplora/${job.name}${saved ? `_step${step}` : ""}`);

  model[0].connect(model[1], apply, "model");
  loader.connect(0, apply, "content_from");
  clip[0].connect(clip[1], prompts, "clip");
  loader.connect(0, prompts, "content_from");
  apply.connect(0, sampler, "model");
  prompts.connect(0, sampler, "positive");
  prompts.connect(1, sampler, "negative");
  latent.connect(0, sampler, "latent_image");
  sampler.connect(0, decode, "samples");
  vae[0].connect(vae[1], decode, "vae");
  decode.connect(0, save, "images");

  save.size = [Math.max(save.size[0], 360), Math.max(save.size[1], 400)]; // room for its result
  const group = new LG.LGraphGroup(`Use ${label}`);
  group.configure({ id: -1, title: `Use ${label}`, bounding: [0, 0, 10, 10], color: "#3f789e", font_size: 22 });
  graph.add(group);
  const nodes = { loader, apply, prompts, sampler, decode, save, latent, group };
  // laid out now with the sizes the graph holds, and again once Nodes 2.0 has drawn the nodes (their size
  // follows their content there, often taller than the classic one)
  nodes.layout = () => layoutUseGraph(app, trainNode, nodes);
  nodes.layout();
  return nodes;
}

/** A node's size as drawn, in graph units (body, without the title): the larger of the graph's and, in Nodes
 * 2.0, of its element on the page. */
export function renderedSize(app, node) {
  const TITLE = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const size = [node.size[0], node.size[1]];
  const el = document.querySelector(`.lg-node[data-node-id="${node.id}"]`);
  const scale = app.canvas?.ds?.scale || 1;
  if (!el || !el.offsetParent) return size;
  const r = el.getBoundingClientRect();
  return [Math.max(size[0], r.width / scale), Math.max(size[1], r.height / scale - TITLE)];
}

/** Moves a node so that both renderers see it. The classic canvas draws node.pos. Nodes 2.0 draws its own layout
 * store: 1.58.1's pos setter writes to it, but on 1.32.9 setting pos changes only the graph's copy, and the store
 * (hence the drawn node, and node.pos again on the next sync) is moved through the canvas's layout mutations, as
 * that frontend's own arrange / drag code does. */
export function moveNode(app, node, x, y) {
  node.pos = [x, y];
  const canvas = app.canvas;
  if (typeof canvas?.repositionNodesVueMode === "function") {
    canvas.repositionNodesVueMode([{ node, newPos: { x, y } }]);
  }
}

/** Two columns right of the train node (inputs, then sampling), and the group around them. */
function layoutUseGraph(app, trainNode, { loader, apply, prompts, latent, sampler, decode, save, group }) {
  const TITLE = window.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
  const GAP = 24;
  const trainSize = renderedSize(app, trainNode);
  const x0 = trainNode.pos[0] + trainSize[0] + 80;
  const y0 = trainNode.pos[1];
  const column = (nodes, x) => {
    let y = y0 + 40;
    let w = 0;
    for (const n of nodes) {
      const [nw, nh] = renderedSize(app, n);
      moveNode(app, n, x, y);
      y += nh + TITLE + GAP;
      w = Math.max(w, nw);
    }
    return [x + w, y - GAP];
  };
  const [r1, b1] = column([loader, apply, prompts, latent], x0 + 20);
  const [r2, b2] = column([sampler, decode], r1 + 40);
  const [r3, b3] = column([save], r2 + 40);
  const bounding = [x0, y0 - TITLE - 10, r3 + 20 - x0, Math.max(b1, b2, b3) + 20 - (y0 - TITLE - 10)];
  if (typeof group.configure === "function") group.configure({ ...group.serialize?.(), bounding });
  else group._bounding?.set?.(bounding);
  trainNode.graph?.setDirtyCanvas(true, true);
}
