// Building DOM from API data without ever parsing it as HTML: every string becomes a text node.

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(node, attrs, children) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "onclick" || k === "oninput" || k === "onchange" || k === "onsubmit") node[k] = v;
    else if (k === "text") node.textContent = String(v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/** `el("td", {class: "x"}, "text", childNode)`: an element whose strings are text, never HTML. */
export function el(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

export function svg(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export const $ = (id) => document.getElementById(id);

/** A value as short readable text (JSON for objects), cut at `max` characters. */
export function brief(value, max = 400) {
  let s;
  if (value === undefined || value === null) return "";
  if (typeof value === "string") s = value;
  else {
    try {
      s = JSON.stringify(value);
    } catch {
      s = String(value);
    }
  }
  return s.length > max ? `${s.slice(0, max)}… (${s.length - max} more characters)` : s;
}

export function pretty(value, max = 20000) {
  if (value === undefined || value === null) return "";
  let s;
  try {
    s = typeof value === "string" ? value : JSON.stringify(value, null, 2);
  } catch {
    s = String(value);
  }
  return s.length > max ? `${s.slice(0, max)}\n… (${s.length - max} more characters)` : s;
}

export function fmtTime(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

/** The time of day with milliseconds (UTC): attempts of one task are seconds apart. */
export function fmtClock(ms) {
  if (!ms) return "";
  return new Date(ms).toISOString().slice(11, 23);
}

export function fmtAge(ms, now = Date.now()) {
  if (!ms) return "";
  let s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  s %= 60;
  if (m < 60) return `${m}m${String(s).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d`;
}

export function fmtDuration(startMs, endMs) {
  if (!startMs || !endMs) return "";
  const d = endMs - startMs;
  return d < 1000 ? `${d} ms` : `${(d / 1000).toFixed(d < 10000 ? 2 : 1)} s`;
}

/** Run `fn` once in the next animation frame however often it is asked for before then. */
export function coalesce(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      fn();
    });
  };
}
