// The runs table: filters and sort in the URL, one page at a time from /celery-agent/api/runs.
"use strict";
const COLUMNS = [["state", "status"], ["name", "name"], ["queue", "queue"], ["worker", "worker"],
  ["user", "user"], ["attempt", "attempt"], ["duration", "duration"], [null, "GPUs"],
  ["submitted", "submitted"], [null, "tags"]];
const query = new URLSearchParams(location.search);
const newer = [];
let timer = null;

function metricNames() { return (query.get("metrics") || "").split(",").map(s => s.trim()).filter(Boolean); }

function header() {
  const sort = query.get("sort") || "-submitted";
  const row = CA.el("tr");
  for (const [key, label] of COLUMNS) {
    const th = CA.el("th", {text: label});
    if (key) {
      th.className = "sort";
      if (sort.replace("-", "") === key) th.textContent += sort.startsWith("-") ? " \u25BC" : " \u25B2";
      th.onclick = () => { query.set("sort", sort === "-" + key ? key : "-" + key); query.delete("cursor"); newer.length = 0; go(); };
    }
    row.append(th);
  }
  metricNames().forEach((name, i) => {
    const th = CA.el("th", {class: "num sort", text: name, title: "sort this page by " + name});
    th.onclick = () => sortPage(COLUMNS.length + i, th);
    row.append(th);
  });
  document.querySelector("#runs thead").replaceChildren(row);
}

function line(run) {
  const link = CA.el("a", {href: CA.prefix + "/celery-agent/runs/" + encodeURIComponent(run.run_id), text: run.name || run.run_id.slice(0, 12)});
  const cells = [CA.pill(run.state), link, run.queue, run.worker, run.user,
    run.attempt === null ? "" : String(run.attempt), CA.duration(run.duration),
    (run.gpus || []).join(","), CA.time(run.submitted_at), (run.tags || []).join(", ")];
  const row = CA.el("tr", {"data-run": run.run_id, title: run.error || run.waiting || null});
  cells.forEach((c, i) => row.append(CA.el("td", {class: i === 5 || i === 6 ? "num" : null}, c)));
  for (const name of metricNames()) row.append(CA.el("td", {class: "num", text: CA.number((run.metrics || {})[name])}));
  return row;
}

// A metric column sorts the page's rows (the server pages by submit time or a record column).
function sortPage(column, th) {
  const down = th.dataset.down !== "1";
  th.dataset.down = down ? "1" : "0";
  const body = document.querySelector("#runs tbody");
  const value = (tr) => { const t = tr.children[column] ? tr.children[column].textContent : ""; return t === "" ? null : parseFloat(t); };
  const rows = [...body.children].filter(tr => tr.dataset.run);
  rows.sort((a, b) => { const x = value(a), y = value(b); if (x === null) return 1; if (y === null) return -1; return down ? y - x : x - y; });
  body.replaceChildren(...rows);
  clearTimeout(timer);  // (a refresh would undo the order)
}

async function load() {
  const problem = document.getElementById("problem");
  try {
    const data = await CA.json("/runs?" + query.toString());
    problem.textContent = "";
    document.querySelector("#runs tbody").replaceChildren(...data.runs.map(line));
    if (!data.runs.length) document.querySelector("#runs tbody").append(CA.el("tr", {}, CA.el("td", {colspan: "10", class: "muted", text: "No run matches."})));
    const next = document.getElementById("next");
    next.disabled = !data.next;
    next.onclick = () => { newer.push(query.get("cursor") || ""); query.set("cursor", data.next); go(); };
    document.getElementById("prev").disabled = !newer.length;
    document.getElementById("count").textContent = data.runs.length + " shown, " + data.total + " runs recorded";
    document.body.dataset.loaded = "1";
  } catch (err) {
    problem.textContent = err.message + (err.hint ? " (" + err.hint + ")" : "");
  }
}

function go() {
  history.replaceState(null, "", "?" + query.toString());
  header();
  clearTimeout(timer);
  load().then(() => { if (!query.get("cursor")) timer = setTimeout(go, 5000); });
}

const form = document.getElementById("filters");
for (const input of form.elements) if (input.name && query.get(input.name)) input.value = query.get(input.name);
form.onsubmit = (event) => {
  event.preventDefault();
  for (const input of form.elements) if (input.name) { if (input.value.trim()) query.set(input.name, input.value.trim()); else query.delete(input.name); }
  query.delete("cursor"); newer.length = 0; go();
};
document.getElementById("clear").onclick = () => { for (const input of form.elements) if (input.name) input.value = ""; form.onsubmit(new Event("submit")); };
document.getElementById("prev").onclick = () => { const c = newer.pop(); if (c) query.set("cursor", c); else query.delete("cursor"); go(); };
go();
