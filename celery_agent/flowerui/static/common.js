// Shared by the celery-agent pages: the url prefix, fetching JSON, formatting.
"use strict";
const CA = {
  prefix: document.body.dataset.prefix || "",
  api(path) { return this.prefix + "/celery-agent/api" + path; },
  async json(path, init) {
    const resp = await fetch(this.api(path), Object.assign({credentials: "same-origin"}, init || {}));
    let data = null;
    try { data = await resp.json(); } catch (e) { data = {error: resp.status + " " + resp.statusText}; }
    if (!resp.ok) { const err = new Error(data.error || resp.statusText); err.hint = data.hint || ""; throw err; }
    return data;
  },
  el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const kid of kids) if (kid !== null && kid !== undefined) node.append(kid);
    return node;
  },
  duration(s) {
    if (s === null || s === undefined) return "";
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60), h = Math.floor(m / 60);
    return h ? h + " h " + (m % 60) + " min" : m + " min " + Math.round(s % 60) + " s";
  },
  time(t) { return t ? new Date(t * 1000).toLocaleString() : ""; },
  number(v) { return v === null || v === undefined ? "" : (Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3) : +v.toFixed(4)).toString(); },
  pill(state) { return this.el("span", {class: "pill s-" + state, text: state}); },
  xsrf() { const m = document.cookie.match(/(?:^|; )_xsrf=([^;]*)/); return m ? decodeURIComponent(m[1]) : (document.body.dataset.xsrf || ""); },
};
