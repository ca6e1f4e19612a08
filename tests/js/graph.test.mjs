// Unit tests of web/js/graph.js (the node / workflow look-up both panels use) without a browser: `node --test tests/js`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { NIL_ID, execIdOf, hideUiKeyInHistory, nodeForExecId, workflowIdOf } from "../../web/js/graph.js";

function graphWith(id, nodes) {
  const g = { id, nodes, getNodeById: (nid) => nodes.find((n) => String(n.id) === String(nid)) ?? null };
  for (const n of nodes) n.graph = g;
  return g;
}

test("a node inside a subgraph is found by its execution id, and gives it back", () => {
  const inner = { id: 5, type: "UnZipLoRATrainFolder" };
  const sub = graphWith("sub", [inner]);
  const top = { id: 3, type: "UnZipLoRATrain" };
  const wrapper = { id: 12, subgraph: sub };
  const app = { rootGraph: graphWith("wf-1", [top, wrapper]) };
  assert.equal(execIdOf(app, top), "3");
  assert.equal(execIdOf(app, inner), "12:5", "a batch panel inside a subgraph matches the job's recorded node id");
  assert.equal(nodeForExecId(app, "12:5"), inner);
  assert.equal(nodeForExecId(app, 3), top);
  assert.equal(nodeForExecId(app, "12:9"), null);
  assert.equal(nodeForExecId(app, null), null);
  assert.equal(execIdOf(app, { id: 7, graph: {} }), null);
});

test("the workflow id is the root graph's, none for litegraph's nil id", () => {
  assert.equal(workflowIdOf({ rootGraph: { id: "wf-1" } }), "wf-1");
  assert.equal(workflowIdOf({ graph: { id: "wf-2" } }), "wf-2");
  assert.equal(workflowIdOf({ rootGraph: { id: NIL_ID } }), null);
  assert.equal(workflowIdOf({}), null);
});

test("the job and batch ui keys are dropped from the history by one wrapper, files kept", async () => {
  const history = () => ({ History: [{ outputs: { 3: { unziplora_job: ["a"], images: [1] },
                                                  5: { unziplora_batch: ["b"] } } }] });
  const api = { getHistory: async () => history() };
  hideUiKeyInHistory(api, "unziplora_job");
  const first = api.getHistory;
  hideUiKeyInHistory(api, "unziplora_batch");
  assert.equal(api.getHistory, first, "wrapped once, not once per key");
  const data = await api.getHistory();
  assert.deepEqual(data.History[0].outputs, { 3: { images: [1] }, 5: {} });
  const list = { getHistory: async () => [{ outputs: { 3: { unziplora_job: ["a"] } } }] };  // 1.58: a list
  hideUiKeyInHistory(list, "unziplora_job");
  assert.deepEqual((await list.getHistory())[0].outputs, { 3: {} });
});
