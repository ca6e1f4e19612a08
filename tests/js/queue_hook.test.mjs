// Unit tests of web/js/queue_hook.js (what the pack does to every queued prompt) without a browser:
// `node --test tests/js`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { droppedOutputsText, forceRerun, hookQueuePrompt, queuedNodeIds } from "../../web/js/queue_hook.js";

const prompt = () => ({
  3: { class_type: "UnZipLoRATrain", inputs: { seed: 1 } },
  4: { class_type: "KSampler", inputs: {} },
  "12:5": { class_type: "UnZipLoRATrain", inputs: {} },
});

test("the Train nodes a prompt runs: its partial targets when it has them, else all of them", () => {
  assert.deepEqual(queuedNodeIds(prompt(), undefined, "UnZipLoRATrain"), ["3", "12:5"]);
  assert.deepEqual(queuedNodeIds(prompt(), [3], "UnZipLoRATrain"), ["3"]);
  assert.deepEqual(queuedNodeIds(prompt(), ["4"], "UnZipLoRATrain"), [], "a KSampler target is not a Train node");
  assert.deepEqual(queuedNodeIds(undefined, undefined, "UnZipLoRATrain"), []);
});

test("only the listed Train nodes get the fresh key, their other inputs kept", () => {
  const out = prompt();
  forceRerun(out, ["3", "4"], "UnZipLoRATrain", "unziplora_train", "t1");
  assert.deepEqual(out[3].inputs, { seed: 1, unziplora_train: "t1" });
  assert.deepEqual(out[4].inputs, {}, "a listed node of another type is left alone");
  assert.deepEqual(out["12:5"].inputs, {}, "an unlisted Train node is left alone");
  forceRerun(out, null, "UnZipLoRATrain", "unziplora_train", "t2");
  assert.equal(out[3].inputs.unziplora_train, "t1");
});

test("outputs left out are named, only in prompts with the pack's nodes", () => {
  const res = { prompt_id: "p", node_errors: { 9: { class_type: "CLIPVisionLoader",
    errors: [{ message: "Value not in list", details: "clip_name: 'x' not in []" }] } } };
  assert.equal(droppedOutputsText(prompt(), res),
    "Left out because of: CLIPVisionLoader #9 (Value not in list: clip_name: 'x' not in [])");
  assert.equal(droppedOutputsText({ 4: { class_type: "KSampler" } }, res), null, "not our graph: no toast");
  assert.equal(droppedOutputsText(prompt(), { prompt_id: "p", node_errors: {} }), null);
  assert.equal(droppedOutputsText(prompt(), { node_errors: res.node_errors }), null, "not queued at all");
});

test("the hook runs before and after the request, and undoes what it marked when the request fails", async () => {
  const calls = [];
  const api = { queuePrompt: async (n, data) => { calls.push(["request", n]); if (data.fail) throw new Error("400"); return { prompt_id: "p" }; } };
  hookQueuePrompt(api, {
    before: (output) => { calls.push(["before", Object.keys(output)]); return ["entry"]; },
    after: (_output, res) => calls.push(["after", res.prompt_id]),
    failed: (marked) => calls.push(["failed", marked]),
  });
  assert.deepEqual(await api.queuePrompt(0, { output: { 3: {} } }), { prompt_id: "p" });
  await assert.rejects(api.queuePrompt(1, { output: {}, fail: true }), /400/);
  assert.deepEqual(calls, [["before", ["3"]], ["request", 0], ["after", "p"],
    ["before", []], ["request", 1], ["failed", ["entry"]]]);
});

test("a hook that throws never stops the prompt", async () => {
  const api = { queuePrompt: async () => ({ prompt_id: "p" }) };
  const warn = console.warn;
  console.warn = () => {};
  try {
    hookQueuePrompt(api, { before: () => { throw new Error("x"); }, after: () => { throw new Error("y"); },
      failed: () => {} });
    assert.deepEqual(await api.queuePrompt(0, { output: {} }), { prompt_id: "p" });
  } finally {
    console.warn = warn;
  }
});
