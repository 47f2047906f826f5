// A run's page: its data from /celery-agent/api/runs/ID, its log tail first, then live by
// server-sent events; earlier lines on demand; cancel and rerun.
"use strict";
const RUN = document.body.dataset.run;
const logBox = document.getElementById("log");
let run = null, first = "", stream = null;

function grid(id, pairs) {
  const dl = document.getElementById(id);
  dl.replaceChildren();
  for (const [k, v] of pairs) {
    if (v === null || v === undefined || v === "" || (Array.isArray(v) && !v.length)) continue;
    dl.append(CA.el("dt", {text: k}), CA.el("dd", {}, typeof v === "object" && !(v instanceof Node) ? JSON.stringify(v) : v));
  }
}

function table(id, rows) {
  document.getElementById(id).replaceChildren(...rows.map(r => CA.el("tr", {}, ...r.map((c, i) => CA.el("td", {class: i && typeof c === "number" ? "num" : null}, typeof c === "object" && c !== null && !(c instanceof Node) ? JSON.stringify(c) : String(c ?? ""))))));
}

function show(data) {
  run = data;
  document.getElementById("name").textContent = data.name || data.run_id;
  document.getElementById("state").replaceChildren(CA.pill(data.state));
  document.getElementById("cancel").disabled = data.finished;
  grid("outcome", [["run id", data.run_id], ["state", data.state], ["waiting", data.waiting], ["exit code", data.exit_code],
    ["error", data.error ? CA.el("span", {class: "error", text: data.error}) : null], ["error stage", data.error_stage],
    ["last error", data.last_error], ["attempt", data.attempt], ["queue", data.queue], ["worker", data.worker],
    ["host", data.host], ["user", data.user], ["project", data.project], ["submitted", CA.time(data.submitted_at)],
    ["started", CA.time(data.running_at || data.preparing_at)], ["ended", CA.time(data.ended_at)],
    ["duration", CA.duration(data.duration)], ["output", data.output_dir]]);
  const timings = Object.entries(data.timings || {});
  table("timings", timings.length ? timings.map(([k, v]) => [k, typeof v === "number" ? CA.duration(v) : v]) : [["not yet"]]);
  const given = data.params.given || {}, resolved = data.params.resolved || {};
  const names = [...new Set([...Object.keys(given), ...Object.keys(resolved)])];
  table("params", names.length ? [["name", "given", "resolved"], ...names.map(n => [n, n in given ? given[n] : "", n in resolved ? resolved[n] : ""])] : [["none"]]);
  grid("spec", [["repo", data.repo], ["commit", data.commit], ...Object.entries(data.spec), ["env", data.env_source], ["env key", data.env_key]]);
  grid("resources", [...Object.entries(data.usage || {}), ["gpus", data.gpus]]);
  const diff = data.diff;
  document.getElementById("diff").replaceChildren(diff.files.length
    ? CA.el("table", {}, ...diff.files.map(f => CA.el("tr", {}, CA.el("td", {text: f.path}), CA.el("td", {class: "num", text: f.binary ? "binary" : "+" + f.added + " -" + f.removed}))))
    : "no uncommitted changes");
  document.getElementById("packages-count").textContent = data.packages.length ? data.packages.length + " packages pinned" : "none recorded";
  document.getElementById("packages").textContent = data.packages.join("\n");
  const art = data.artifacts, box = document.getElementById("artifacts");
  if (art && art.files.length) {
    box.className = "";
    box.replaceChildren(CA.el("p", {class: "muted", text: art.status + ", " + art.count + " file(s), " + art.bytes + " bytes"}),
      CA.el("table", {}, ...art.files.map(f => CA.el("tr", {}, CA.el("td", {}, CA.el("a", {href: CA.api("/runs/" + RUN + "/artifacts/" + f.path.split("/").map(encodeURIComponent).join("/")), text: f.path})), CA.el("td", {class: "num", text: f.size + " B"})))));
  } else if (art) box.textContent = art.status + (art.error ? ": " + art.error : "");
  if (!document.getElementById("rerun-params").value) document.getElementById("rerun-params").value = JSON.stringify(given, null, 1);
}

async function refresh() {
  try { show(await CA.json("/runs/" + RUN)); document.getElementById("problem").textContent = ""; }
  catch (err) { document.getElementById("problem").textContent = err.message; }
  if (run && !run.finished) setTimeout(refresh, 3000);
}

function append(lines, before) {
  const text = document.createTextNode(lines.join("\n") + "\n");
  const stick = logBox.scrollTop + logBox.clientHeight >= logBox.scrollHeight - 4;
  if (before) logBox.prepend(text); else { logBox.append(text); if (stick) logBox.scrollTop = logBox.scrollHeight; }
}

async function openLog() {
  const tail = await CA.json("/runs/" + RUN + "/log");
  if (tail.lines.length) append(tail.lines);
  logBox.scrollTop = logBox.scrollHeight;
  first = tail.first;
  document.getElementById("earlier").hidden = !tail.more;
  follow(tail.last);
}

function follow(after) {
  const live = document.getElementById("live");
  stream = new EventSource(CA.api("/runs/" + RUN + "/log/stream?after=" + encodeURIComponent(after || "0-0")));
  stream.onopen = () => { live.textContent = "following"; logBox.dataset.live = "on"; };
  stream.onmessage = (event) => append(JSON.parse(event.data));
  stream.addEventListener("end", () => { stream.close(); live.textContent = "run ended"; logBox.dataset.live = "ended"; });
  stream.onerror = () => { if (logBox.dataset.live !== "ended") live.textContent = "reconnecting"; };
}

document.getElementById("earlier").onclick = async () => {
  const win = await CA.json("/runs/" + RUN + "/log?before=" + encodeURIComponent(first));
  const top = logBox.scrollHeight - logBox.scrollTop;
  if (win.lines.length) append(win.lines, true);
  logBox.scrollTop = logBox.scrollHeight - top;
  first = win.first || first;
  document.getElementById("earlier").hidden = !win.more;
};

async function post(action, body) {
  return CA.json("/runs/" + RUN + "/" + action, {method: "POST", body: JSON.stringify(body || {}),
    headers: {"Content-Type": "application/json", "X-XSRFToken": CA.xsrf()}});
}

document.getElementById("cancel").onclick = async () => {
  const button = document.getElementById("cancel");
  if (!button.dataset.armed) {  // a second click confirms (no modal dialog)
    button.dataset.armed = "1"; button.textContent = "Really cancel?";
    setTimeout(() => { delete button.dataset.armed; button.textContent = "Cancel"; }, 5000);
    return;
  }
  try { const r = await post("cancel"); document.getElementById("problem").textContent = ""; document.getElementById("cancel").disabled = true; document.getElementById("live").textContent = "cancel requested (was " + r.was + ")"; }
  catch (err) { document.getElementById("problem").textContent = err.message + (err.hint ? " (" + err.hint + ")" : ""); }
};
document.getElementById("rerun-open").onclick = () => { document.getElementById("rerun").hidden = false; };
document.getElementById("rerun-go").onclick = async () => {
  const out = document.getElementById("rerun-result");
  let params;
  try { params = JSON.parse(document.getElementById("rerun-params").value || "{}"); }
  catch (err) { out.className = "error"; out.textContent = "params are not JSON: " + err.message; return; }
  try {
    const r = await post("rerun", {params, queue: document.getElementById("rerun-queue").value.trim() || null});
    out.className = ""; out.replaceChildren("submitted ", CA.el("a", {href: CA.prefix + "/celery-agent/runs/" + r.run_id, text: r.run_id}));
  } catch (err) { out.className = "error"; out.textContent = err.message + (err.hint ? " (" + err.hint + ")" : ""); }
};

refresh().then(openLog);
