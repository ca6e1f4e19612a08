// Small pure helpers shared by the node panel and the jobs sidebar (no ComfyUI imports here).

export const STATE_LABELS = {
  queued: "queued",
  running: "running",
  cancelling: "cancelling…",
  cancelled: "cancelled",
  interrupted: "interrupted",
  failed: "failed",
  done: "done",
};

/** Queued, running or cancelling: the server says so on every job record (job_records.py), one list of states. */
export function isActive(job) {
  return !!job?.active;
}

/** Create an element: el("div", {class: "x", title: "t"}, child, "text", ...). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function basename(path) {
  if (!path) return "";
  const parts = String(path).split(/[\\/]/);
  return parts[parts.length - 1];
}

/** 0.97791 -> "0.9779", 1.2e-5 -> "1.20e-5". */
export function formatLoss(loss) {
  if (loss === null || loss === undefined || !Number.isFinite(loss)) return "–";
  const a = Math.abs(loss);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) return loss.toExponential(2).replace("e+", "e");
  return loss.toPrecision(4);
}

/** Speed as it/s, or s/it when slower than one step a second (CPU, big models). */
export function formatSpeed(itPerS) {
  if (!itPerS || !Number.isFinite(itPerS)) return "";
  if (itPerS >= 1) return `${itPerS.toFixed(itPerS >= 10 ? 0 : 2)} it/s`;
  return `${(1 / itPerS).toFixed(1)} s/it`;
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return "";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
  const h = Math.floor(m / 60);
  return `${h} h ${String(m % 60).padStart(2, "0")} min`;
}

export function formatClock(epochSeconds) {
  if (!epochSeconds) return "";
  const d = new Date(epochSeconds * 1000);
  const now = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (d.toDateString() === now.toDateString()) return time;
  return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

export function percent(job) {
  if (!job || !job.total) return 0;
  return Math.max(0, Math.min(100, (100 * job.step) / job.total));
}

/** The latest preview of each kind, in the order content, style, combined, then anything else. */
export function latestPreviews(previews) {
  const byKind = new Map();
  for (const p of previews || []) {
    if (p && p.filename) byKind.set(p.kind || "preview", p);
  }
  const order = ["content", "style", "combined"];
  const kinds = [...byKind.keys()].sort((a, b) => {
    const ia = order.indexOf(a) === -1 ? order.length : order.indexOf(a);
    const ib = order.indexOf(b) === -1 ? order.length : order.indexOf(b);
    return ia - ib || a.localeCompare(b);
  });
  return kinds.map((k) => byKind.get(k));
}

export function viewQuery(preview) {
  const q = new URLSearchParams({
    filename: preview.filename,
    subfolder: preview.subfolder || "",
    type: preview.type || "output",
  });
  return `/view?${q.toString()}`;
}

/** [label, path] rows of a finished job's files. */
export function outputRows(job) {
  const out = (job && job.outputs) || {};
  const rows = [];
  for (const [key, label] of [["content", "content"], ["style", "style"], ["bundle", "bundle"]]) {
    if (out[key]) rows.push([label, out[key]]);
  }
  return rows;
}

/** The last folders of a file's directory: ".../models/loras/unziplora". */
export function shortDir(path, keep = 3) {
  if (!path) return "";
  const parts = String(path).split(/[\\/]/).filter(Boolean);
  parts.pop();
  const tail = parts.slice(-keep).join("/");
  return parts.length > keep ? `…/${tail}` : tail;
}

/** What a job keeps besides its final LoRAs (checkpoint_bytes: its checkpoints and the LoRAs save_every wrote)
 * and what the sidebar's delete button removes: {meta, title}; null when it keeps nothing. */
export function jobExtras(job) {
  const bytes = Number.isFinite(job?.checkpoint_bytes) ? job.checkpoint_bytes : null;
  if (!bytes) return null;
  const stepCount = Object.keys(job.info?.step_files ?? {}).length;
  const what = stepCount ? `checkpoints and ${stepCount} step LoRA ${stepCount === 1 ? "pair" : "pairs"}` : "checkpoints";
  const size = formatBytes(bytes);
  const title = `Delete this job's ${what} (${size}); its final LoRAs are kept`
    + (job.resumable ? "; it can no longer be resumed" : "");
  return { meta: `${what} ${size}`, title };
}

/** 12345678 -> "11.8 MB". */
export function formatBytes(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return "";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}
