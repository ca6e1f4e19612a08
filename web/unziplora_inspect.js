// UnZipLoRA Inspect shows its map (a 1200 px wide picture: per block, per linear, with numbers) on the node. At
// the stock node size the picture is drawn ~200 px wide and its text cannot be read; a node added from the
// library starts large enough to read it (a loaded workflow keeps its own size: configure() comes after this).

import { app } from "../../scripts/app.js";

export const INSPECT_SIZE = [760, 720];

app.registerExtension({
  name: "UnZipLoRA.Inspect",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== "UnZipLoRAInspect") return;
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function (...args) {
      const r = created?.apply(this, args);
      const [w, h] = this.size ?? [0, 0];
      this.size = [Math.max(w, INSPECT_SIZE[0]), Math.max(h, INSPECT_SIZE[1])];
      return r;
    };
  },
});
