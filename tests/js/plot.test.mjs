// Unit tests of web/js/plot.js's pure parts without a browser: `node --test tests/js`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { lossCSV, lossPoints, selectionSteps, smooth } from "../../web/js/plot.js";

test("loss points end at the job's step and skip non-finite values", () => {
  const job = { step: 10, losses: [0.5, NaN, 0.25] };
  assert.deepEqual(lossPoints(job), [{ step: 8, loss: 0.5 }, { step: 10, loss: 0.25 }]);
  assert.deepEqual(lossPoints({}), []);
});

test("smoothing is debiased: a constant stays constant from the first value", () => {
  assert.deepEqual(smooth([2, 2, 2]).map((v) => +v.toFixed(12)), [2, 2, 2]);
  const s = smooth([0, 1], 0.5);
  assert.equal(s[0], 0);
  assert.ok(Math.abs(s[1] - 2 / 3) < 1e-12);
});

test("the CSV has one row per step with the smoothed value", () => {
  assert.equal(lossCSV({ step: 2, losses: [1, 1] }), "step,loss,smoothed\n1,1,1.00000\n2,1,1.00000\n");
});

test("selection steps are the server's, never re-derived here", () => {
  assert.deepEqual(selectionSteps({ selection_steps: [1, 4, 7] }), [1, 4, 7]);
  // a record without them (or a mode without column separation) marks nothing
  assert.deepEqual(selectionSteps({ info: { config: '{"mode": "unziplora", "steps": 9, "sample_times": 3}' } }), []);
  assert.deepEqual(selectionSteps(null), []);
});
