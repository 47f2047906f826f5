/* A run page's metric charts: one chart per metric the run reported, drawn with charts.js from
 * /celery-agent/api/runs/RUN_ID/metrics into <section id="metrics" data-run="RUN_ID">, and drawn
 * again every few seconds until the run has ended. The section stays empty (hidden) while the
 * run has reported no metric. */
(function () {
  "use strict";
  var REFRESH_MS = 3000;
  var box = document.getElementById("metrics");
  if (!box || !box.dataset.run || !window.CeleryAgentCharts) return;
  var prefix = document.body.dataset.prefix || "";
  var url = prefix + "/celery-agent/api/runs/" + encodeURIComponent(box.dataset.run) + "/metrics";
  var charts = {};

  function head(data) {
    var h = document.createElement("h2");
    h.textContent = "Metrics";
    var note = document.createElement("span");
    note.className = "muted";
    note.id = "metrics-note";
    var names = Object.keys(data.series);
    var cut = data.downsampled.map(function (n) { return n + " (" + data.counts[n] + " points)"; });
    note.textContent = " " + names.length + " series" +
      (cut.length ? "; downsampled for the chart: " + cut.join(", ") : "") +
      (data.ended ? "" : "; live");
    h.appendChild(note);
    return h;
  }

  function draw(data) {
    var names = Object.keys(data.series);
    box.textContent = "";  // (an empty section is hidden: no metric, no section)
    if (names.length === 0) return;
    box.appendChild(head(data));
    var grid = document.createElement("div");
    grid.className = "ca-charts";
    grid.style.cssText = "display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));" +
      "gap:8px 20px";
    box.appendChild(grid);
    names.forEach(function (name, i) {
      var chart = charts[name] || document.createElement("div");
      charts[name] = chart;
      chart.dataset.metric = name;
      grid.appendChild(chart);
      window.CeleryAgentCharts.line(chart, {
        title: name, xLabel: "step",
        series: [{label: name, points: data.series[name],
                  color: window.CeleryAgentCharts.colors[i % 10]}]
      });
    });
  }

  function load() {
    fetch(url, {credentials: "same-origin"}).then(function (resp) {
      return resp.json().then(function (data) {
        if (!resp.ok) throw new Error(data.error || resp.statusText);
        return data;
      });
    }).then(function (data) {
      draw(data);
      if (!data.ended) setTimeout(load, REFRESH_MS);
    }).catch(function (err) {
      box.textContent = "";
      var p = document.createElement("p");
      p.className = "error";
      p.textContent = "Metrics: " + err.message;
      box.appendChild(p);
      setTimeout(load, REFRESH_MS * 3);
    });
  }

  load();
})();
