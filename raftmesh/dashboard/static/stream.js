// Server-sent events read with fetch + a stream reader (EventSource cannot send the
// Authorization header). A stream that fails or ends is opened again with a capped exponential
// backoff (a leader change or a restarting node ends streams); no event for IDLE_MS (the server
// pings every ~5 s) counts as a dead connection.

import { authHeaders, errorOf } from "./api.js";

const FIRST_DELAY_MS = 300;
const MAX_DELAY_MS = 4000;
const IDLE_MS = 15000;
// An SSE line longer than this is a broken or hostile stream: drop the connection.
const MAX_BUFFER_CHARS = 32 * 1024 * 1024;

/**
 * `new EventStream(path, {onEvent(name, data), onState(state, detail)})`; `start()`, `close()`.
 * States: "connecting", "open", "reconnecting" (detail: the error), "refused" (401/403/404/400:
 * retrying cannot help until the token or the page changes; detail: the ApiError), "ended" (the
 * server said `end`), "closed".
 */
export class EventStream {
  constructor(path, { onEvent, onState }) {
    this.path = path;
    this.onEvent = onEvent;
    this.onState = onState || (() => {});
    this.closed = false;
    this.ended = false;
    this.ctrl = null;
    this.wake = null;
    this.serverError = null;
  }

  start() {
    this.loop();
    return this;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.ctrl) this.ctrl.abort();
    if (this.wake) this.wake();
    this.onState("closed");
  }

  async loop() {
    let delay = FIRST_DELAY_MS;
    let state = "connecting";
    this.onState(state);
    while (!this.closed) {
      let failure = null;
      const ctrl = new AbortController();
      this.ctrl = ctrl;
      try {
        const resp = await fetch(this.path, {
          headers: { ...authHeaders(), Accept: "text/event-stream" },
          cache: "no-store",
          signal: ctrl.signal,
        });
        if (!resp.ok) {
          const err = await errorOf(resp);
          if ([400, 401, 403, 404].includes(resp.status)) {
            if (!this.closed) this.onState("refused", err);
            return;
          }
          throw err;
        }
        if (!resp.body) throw new Error("the response has no body to stream");
        await this.read(resp.body, ctrl, () => {
          if (state !== "open") {
            state = "open";
            this.onState("open");
          }
          delay = FIRST_DELAY_MS;
        });
        if (this.ended) {
          this.onState("ended");
          return;
        }
        const e = this.serverError;
        this.serverError = null;
        failure = e ? new Error(`${e.code}: ${e.message}`) : new Error("the server closed the stream");
      } catch (exc) {
        failure = exc;
      }
      if (this.closed) return;
      state = "reconnecting";
      this.onState("reconnecting", failure);
      await new Promise((resolve) => {
        const t = setTimeout(resolve, delay * (0.75 + Math.random() * 0.5));
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = null;
      delay = Math.min(delay * 2, MAX_DELAY_MS);
    }
  }

  async read(body, ctrl, onAlive) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    let scanned = 0;
    let name = "message";
    let data = [];
    let idle = setTimeout(() => ctrl.abort(), IDLE_MS);
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        clearTimeout(idle);
        idle = setTimeout(() => ctrl.abort(), IDLE_MS);
        buf += decoder.decode(value, { stream: true });
        // scan only what arrived since the last newline search: a multi-megabyte snapshot comes
        // in many chunks, and searching it from its start each time would be quadratic
        let start = 0;
        for (;;) {
          let nl = -1;
          for (let i = scanned; i < buf.length; i++) {
            const c = buf.charCodeAt(i);
            if (c === 10 || c === 13) {
              nl = i;
              break;
            }
          }
          if (nl < 0) {
            scanned = buf.length;
            break;
          }
          if (buf.charCodeAt(nl) === 13 && nl + 1 >= buf.length) {
            scanned = nl; // a CR at the end: wait to see whether an LF follows
            break;
          }
          const line = buf.slice(start, nl);
          start = buf.charCodeAt(nl) === 13 && buf.charCodeAt(nl + 1) === 10 ? nl + 2 : nl + 1;
          scanned = start;
          if (line === "") {
            if (data.length) {
              let parsed = null;
              try {
                parsed = JSON.parse(data.join("\n"));
              } catch {
                parsed = undefined;
              }
              onAlive();
              if (parsed !== undefined && !this.closed) {
                if (name === "end") this.ended = true;
                // the server's last word before it closes a stream it cannot go on with
                if (name === "error" && parsed && parsed.error) this.serverError = parsed.error;
                else this.onEvent(name, parsed);
              }
            } else if (name !== "message") {
              onAlive();
              if (name === "end") this.ended = true;
              if (!this.closed) this.onEvent(name, null);
            }
            name = "message";
            data = [];
            if (this.ended) return;
            continue;
          }
          if (line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "event") name = val;
          else if (field === "data") data.push(val);
        }
        if (start) {
          buf = buf.slice(start);
          scanned -= start;
        }
        if (buf.length > MAX_BUFFER_CHARS) throw new Error("an event too large to buffer");
      }
    } finally {
      clearTimeout(idle);
      reader.cancel().catch(() => {});
    }
  }
}
