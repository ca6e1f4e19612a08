// How the page learns about jobs and queued prompts: the pack's websocket event, ComfyUI's own execution events,
// reconnects, and a slow poll for events missed while a job is active.

export const JOB_EVENT = "unziplora.progress";
const POLL_MS = 4000; // while a job is active and the socket is quiet, ask the server (missed events)
const QUIET_MS = 8000;

/**
 * Listen on `api` for the lifetime of the page. `store` takes the jobs (upsert / refresh); `on` gets ComfyUI's
 * execution events for queued Train nodes: executing(execId), error(detail), cached(execIds), interrupted().
 * Registered at import time: the frontend warns about message types nobody listens to.
 */
export function listenForJobs(api, store, on) {
  api.addEventListener(JOB_EVENT, ({ detail }) => {
    if (detail?.job) store.upsert(detail.job);
  });

  let wasDisconnected = false;
  api.addEventListener("status", ({ detail }) => {
    if (!detail) {
      wasDisconnected = true;
    } else if (wasDisconnected) {
      wasDisconnected = false;
      store.refresh();
    }
  });
  api.addEventListener("reconnected", () => store.refresh());

  api.addEventListener("executing", ({ detail }) => {
    if (detail !== null && detail !== undefined) on.executing(detail);
  });
  api.addEventListener("execution_error", ({ detail }) => on.error(detail ?? {}));
  api.addEventListener("execution_cached", ({ detail }) => on.cached(detail?.nodes ?? []));
  api.addEventListener("execution_interrupted", () => on.interrupted());

  setInterval(() => {
    if (store.anyActive() && Date.now() - store.lastUpdate > QUIET_MS) store.refresh();
  }, POLL_MS);
}
