// The browser's copy of the server's job records (GET /unziplora/jobs + "unziplora.progress" events).
// The server is the source of truth: a reload, a reconnect or another tab just asks it again.

import { isActive } from "./format.js";

export class JobStore {
  /** @param {(path: string, init?: RequestInit) => Promise<Response>} fetchApi  ComfyUI's api.fetchApi */
  constructor(fetchApi) {
    this.fetchApi = fetchApi;
    this.jobs = new Map(); // id -> public job record
    this.listeners = new Set();
    this.lastUpdate = 0; // Date.now() of the last event or refresh
    this.loaded = false;
    this._refreshing = null;
  }

  subscribe(fn) {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  _notify(changed) {
    for (const fn of [...this.listeners]) {
      try {
        fn(changed);
      } catch (err) {
        console.warn("[UnZipLoRA] listener failed", err);
      }
    }
  }

  /** True while GET /unziplora/jobs is in flight. */
  get refreshing() {
    return this._refreshing !== null;
  }

  get(id) {
    return id ? this.jobs.get(id) : undefined;
  }

  /** Newest first. */
  list() {
    return [...this.jobs.values()].sort((a, b) => (b.created || 0) - (a.created || 0));
  }

  anyActive() {
    for (const job of this.jobs.values()) if (isActive(job)) return true;
    return false;
  }

  /** The newest job started by the train node with this execution id ("3", or "12:3" inside a subgraph), among
   * the jobs `accept` keeps (the panel keeps those of the open workflow). */
  latestForNode(nodeId, accept = () => true) {
    let best;
    for (const job of this.jobs.values()) {
      if (String(job.info?.node_id ?? "") !== String(nodeId) || !accept(job)) continue;
      if (!best || (job.created || 0) > (best.created || 0)) best = job;
    }
    return best;
  }

  /** A record from an event or a POST answer. Older snapshots (events may overtake a refresh) are ignored. */
  upsert(job) {
    if (!job || !job.id) return;
    const old = this.jobs.get(job.id);
    if (old && rank(old) > rank(job)) return;
    this.jobs.set(job.id, job);
    this.lastUpdate = Date.now();
    this._notify([job.id]);
  }

  /** Replace everything with the server's list. Concurrent calls share one request. */
  refresh() {
    if (this._refreshing) return this._refreshing;
    this._refreshing = (async () => {
      let ok = false;
      try {
        const res = await this.fetchApi("/unziplora/jobs", { cache: "no-store" });
        if (!res.ok) throw new Error(`GET /unziplora/jobs answered ${res.status}`);
        const data = await res.json();
        const fresh = new Map();
        for (const job of data.jobs || []) {
          const old = this.jobs.get(job.id);
          fresh.set(job.id, old && rank(old) > rank(job) ? old : job);
        }
        this.jobs = fresh;
        this.loaded = true;
        this.lastUpdate = Date.now();
        ok = true;
      } catch (err) {
        // the server may be restarting: keep what we have, the next reconnect refreshes again
        console.warn("[UnZipLoRA] could not fetch the job list:", err?.message ?? err);
      } finally {
        this._refreshing = null;
      }
      if (ok) this._notify(null);
    })();
    return this._refreshing;
  }

  async _post(path, body) {
    const res = await this.fetchApi(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body ?? {}),
    });
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (!res.ok) {
      const message =
        data?.error?.message ?? (typeof data?.error === "string" ? data.error : null) ?? `HTTP ${res.status}`;
      if (data?.job) this.upsert(data.job);
      throw new Error(message);
    }
    return data;
  }

  async cancel(id) {
    const job = await this._post(`/unziplora/jobs/${encodeURIComponent(id)}/cancel`);
    this.upsert(job);
    return job;
  }

  /** Frees a finished job's checkpoints (the server answers 409 while it runs, 404/405 when it is too old to
   * know the route). */
  async deleteCheckpoints(id) {
    const res = await this.fetchApi(`/unziplora/jobs/${encodeURIComponent(id)}/checkpoints`, { method: "DELETE" });
    let data = null;
    try {
      data = await res.json();
    } catch {
      data = null;
    }
    if (res.status === 404 || res.status === 405) {
      throw new Error(data?.error?.message ?? data?.error ?? "this ComfyUI's UnZipLoRA cannot delete checkpoints");
    }
    if (!res.ok) throw new Error(data?.error?.message ?? data?.error ?? `HTTP ${res.status}`);
    if (data?.job) this.upsert(data.job);
    else if (data?.id) this.upsert(data);
    await this.refresh();
    return data;
  }

  /** Re-queues the job's recorded graph with resume_from set; the new job arrives through events. */
  async resume(id, clientId) {
    return this._post(`/unziplora/jobs/${encodeURIComponent(id)}/resume`, { client_id: clientId });
  }
}

// A record only moves forward: state order first, then step. Lets stale snapshots lose.
const STATE_ORDER = { queued: 0, running: 1, cancelling: 2, cancelled: 3, interrupted: 3, failed: 3, done: 3 };

function rank(job) {
  return (STATE_ORDER[job.state] ?? 0) * 1e9 + (job.step || 0) * 10 + (job.previews?.length || 0) / 100;
}
