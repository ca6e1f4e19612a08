// The order Browse Templates lists the pack's templates in (web/unziplora_templates.js applies it).

export const TEMPLATE_ORDER = [
  "Train a content and a style LoRA from one image",
  "Both - recreate or recombine the image with three prompts",
  "Content alone - the subject in new scenes and styles",
  "Style alone - the style on new subjects",
  "Cross two images - content of one, style of another",
  "Train a pair for every image in a folder",
  "Seeds - train three runs to pick the best one",
  "Seeds - score the three runs and pick the best",
  "Compare naive, B-LoRA and UnZipLoRA on one image",
];

/** Our folder's list in TEMPLATE_ORDER (names not in it after, by name); other packs' lists untouched. */
export function orderTemplates(byModule) {
  if (!byModule || typeof byModule !== "object") return byModule;
  const rank = (name) => {
    const i = TEMPLATE_ORDER.indexOf(name);
    return i === -1 ? TEMPLATE_ORDER.length : i;
  };
  for (const [module, names] of Object.entries(byModule)) {
    if (Array.isArray(names) && names.includes(TEMPLATE_ORDER[0])) {
      byModule[module] = [...names].sort((a, b) => rank(a) - rank(b) || String(a).localeCompare(String(b)));
    }
  }
  return byModule;
}
