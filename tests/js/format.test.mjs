// Unit tests of web/js/format.js without a browser: `node --test tests/js` (scripts/test.sh runs them).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  basename, formatBytes, formatDuration, formatLoss, formatSpeed, isActive, jobExtras, latestPreviews, outputRows, percent,
  shortDir, viewQuery,
} from "../../web/js/format.js";

test("isActive reads the server's own flag", () => {
  assert.equal(isActive({ state: "running", active: true }), true);
  assert.equal(isActive({ state: "cancelled", active: false }), false);
  assert.equal(isActive({ state: "running" }), false, "no flag, no guess from a copied state list");
  assert.equal(isActive(null), false);
});

test("losses, speeds, durations and sizes read as the panel shows them", () => {
  assert.equal(formatLoss(0.97791), "0.9779");
  assert.equal(formatLoss(1.2e-5), "1.20e-5");
  assert.equal(formatLoss(12345), "1.23e4");
  assert.equal(formatLoss(NaN), "–");
  assert.equal(formatLoss(null), "–");
  assert.equal(formatSpeed(2.5), "2.50 it/s");
  assert.equal(formatSpeed(12.4), "12 it/s");
  assert.equal(formatSpeed(0.5), "2.0 s/it");
  assert.equal(formatSpeed(0), "");
  assert.equal(formatDuration(59.4), "59 s");
  assert.equal(formatDuration(61), "1 min 01 s");
  assert.equal(formatDuration(3 * 3600 + 5 * 60), "3 h 05 min");
  assert.equal(formatDuration(-1), "");
  assert.equal(formatBytes(12345678), "11.8 MB");
  assert.equal(formatBytes(100), "100 B");
  assert.equal(formatBytes(-5), "");
});

test("paths, progress, outputs and previews", () => {
  assert.equal(basename("models/loras/unziplora/cat_content.safetensors"), "cat_content.safetensors");
  assert.equal(basename("C:\\x\\y.pt"), "y.pt");
  assert.equal(basename(null), "");
  assert.equal(shortDir("a/b/models/loras/unziplora/x.safetensors"), "…/models/loras/unziplora");
  assert.equal(shortDir("loras/x.safetensors"), "loras");
  assert.equal(percent({ step: 3, total: 12 }), 25);
  assert.equal(percent({ step: 30, total: 12 }), 100);
  assert.equal(percent({ step: 3, total: 0 }), 0);
  assert.deepEqual(outputRows({ outputs: { bundle: "b", content: "c" } }), [["content", "c"], ["bundle", "b"]]);
  const previews = [
    { kind: "style", filename: "s1.png" }, { kind: "content", filename: "c1.png" }, { kind: "extra", filename: "e.png" },
    { kind: "content", filename: "c2.png" }, { kind: "combined", filename: "m.png" }, { kind: "style" },
  ];
  assert.deepEqual(latestPreviews(previews).map((p) => p.filename), ["c2.png", "s1.png", "m.png", "e.png"]);
  assert.equal(viewQuery({ filename: "a b.png", subfolder: "unziplora/previews" }),
    "/view?filename=a+b.png&subfolder=unziplora%2Fpreviews&type=output");
});

test("the sidebar names what its delete button removes: checkpoints, and the step LoRAs when there are some", () => {
  assert.equal(jobExtras({ checkpoint_bytes: 0 }), null);
  assert.equal(jobExtras({}), null);
  const plain = jobExtras({ checkpoint_bytes: 2048, resumable: true, info: {} });
  assert.equal(plain.meta, "checkpoints 2.0 KB");
  assert.equal(plain.title, "Delete this job's checkpoints (2.0 KB); its final LoRAs are kept; it can no longer be resumed");
  const steps = jobExtras({ checkpoint_bytes: 3 * 1024 * 1024, resumable: false,
    info: { step_files: { 100: { content: "a" }, 200: { content: "b" } } } });
  assert.equal(steps.meta, "checkpoints and 2 step LoRA pairs 3.0 MB");
  assert.equal(steps.title, "Delete this job's checkpoints and 2 step LoRA pairs (3.0 MB); its final LoRAs are kept");
});
