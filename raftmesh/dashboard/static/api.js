// The dashboard's HTTP API (/api/v1): the bearer token and JSON calls.
// The token lives in sessionStorage: it survives a reload of this tab, not the tab itself.

const TOKEN_KEY = "raftmesh.token";

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    // storage disabled: the token then lasts until the page reloads (kept in memory below)
  }
  memoryToken = token;
}

let memoryToken = getToken();

export function authHeaders() {
  const token = getToken() || memoryToken;
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** An API error: `status` the HTTP status, `code` the gRPC status name from the error body. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorOf(resp) {
  let code = `HTTP_${resp.status}`;
  let message = resp.statusText || "request failed";
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = String(body.error.code || code);
      message = String(body.error.message || message);
    }
  } catch {
    // not JSON (a proxy's page): keep the status line
  }
  return new ApiError(resp.status, code, message);
}

/** GET (no body) or POST (a JSON body) `/api/v1${path}`; resolves to the JSON answer. */
export async function api(path, body, signal) {
  const init = { headers: { ...authHeaders(), Accept: "application/json" }, signal };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(`/api/v1${path}`, init);
  } catch (exc) {
    if (exc && exc.name === "AbortError") throw exc;
    throw new ApiError(0, "UNAVAILABLE", `the node serving this page did not answer (${exc})`);
  }
  if (!resp.ok) throw await errorOf(resp);
  return resp.json();
}

export { errorOf };

/** A fresh id for one action: sent with it and reused on its retries, so it applies once. */
export function newRequestId() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes); // not randomUUID: that needs a secure context (plain http off-loopback is not)
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** POST an action; after a 503/504 or no answer it is sent again (same request_id) with backoff. */
export async function postAction(path, body, onRetry) {
  const sent = { ...body, request_id: newRequestId() };
  for (let attempt = 0; ; attempt++) {
    try {
      return await api(path, sent);
    } catch (exc) {
      const transient = exc instanceof ApiError && [0, 503, 504].includes(exc.status);
      if (!transient || attempt >= ACTION_RETRIES) throw exc;
      if (onRetry) onRetry(exc);
      await new Promise((resolve) => setTimeout(resolve, 500 * 2 ** attempt));
    }
  }
}

const ACTION_RETRIES = 3;

/** Full gRPC method names the page's actions need (whoami's `methods` lists the caller's). */
export const METHODS = {
  cancel: "/raftmesh.v1.Cluster/CancelRun",
  pause: "/raftmesh.v1.Cluster/PauseRun",
  resume: "/raftmesh.v1.Cluster/ResumeRun",
  rerun: "/raftmesh.v1.Cluster/RerunTask",
  approve: "/raftmesh.v1.Cluster/ApproveTask",
};

export function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") p.set(k, v);
  const s = p.toString();
  return s ? `?${s}` : "";
}
