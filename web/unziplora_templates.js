// Browse Templates lists a custom node's templates in the order the server's glob finds the files (directory
// order: "Train" came third on this machine), and both frontends keep that order by default. Train comes first
// here, because every other template uses what it writes; then the ones that use one pair, then the rest.

import { api } from "../../scripts/api.js";

import { orderTemplates } from "./js/templates.js";

if (typeof api.getWorkflowTemplates === "function" && !api.getWorkflowTemplates.__unziplora) {
  const original = api.getWorkflowTemplates;
  const wrapped = async function (...args) {
    return orderTemplates(await original.apply(this, args));
  };
  wrapped.__unziplora = true;
  api.getWorkflowTemplates = wrapped;
}
