// Unit tests of web/js/templates.js (the order Browse Templates shows): `node --test tests/js`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { TEMPLATE_ORDER, orderTemplates } from "../../web/js/templates.js";

test("the pack's templates come Train first, in the set order; other packs' lists are left as they are", () => {
  const asGlobbed = [  // the server's glob order on the machine where Train came third
    "Both - recreate or recombine the image with three prompts", "Style alone - the style on new subjects",
    "Train a content and a style LoRA from one image", "Content alone - the subject in new scenes and styles",
    "Compare naive, B-LoRA and UnZipLoRA on one image", "A template added later",
    "Cross two images - content of one, style of another"];
  const other = ["z", "a"];
  const got = orderTemplates({ "comfyui-unziplora": asGlobbed, "other-pack": other });
  assert.deepEqual(got["comfyui-unziplora"], [
    "Train a content and a style LoRA from one image", "Both - recreate or recombine the image with three prompts",
    "Content alone - the subject in new scenes and styles", "Style alone - the style on new subjects",
    "Cross two images - content of one, style of another", "Compare naive, B-LoRA and UnZipLoRA on one image",
    "A template added later"]);
  assert.deepEqual(got["other-pack"], ["z", "a"]);
  assert.equal(orderTemplates(null), null);
  assert.equal(TEMPLATE_ORDER[0], "Train a content and a style LoRA from one image");
});
