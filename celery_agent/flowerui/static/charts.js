/* celery-agent charts: line charts of series over steps, drawn as SVG by the page itself.
 *
 * No library and no network: the pages that use it work offline. One call draws one chart:
 *
 *   CeleryAgentCharts.line(element, {
 *     title: "loss", xLabel: "step",
 *     series: [{label: "run a1b2", points: [[0, 0.9], [1, 0.7]]},      // [x, y]; y null = gap
 *              {label: "best", points: [...], step: true, markers: false, dash: "4 3"},
 *              {label: "trials", points: [...], markers: true, line: false}]
 *   });
 *
 * It draws axes with ticks, a grid, one line per series (markers when asked), a legend, and on
 * hover a guide with each series' value at the nearest step; when every value is positive, a
 * "log" box in the title draws them on a log10 axis. Each series' path carries
 * data-label and data-points (how many points it drew) for tests and other scripts.
 */
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#2b7bb9", "#d9822b", "#3f9c35", "#b23b8c", "#7a5cc6", "#c23030", "#1b998b",
                "#8a6d3b", "#5c7080", "#e0559a"];
  var PAD = {top: 14, right: 18, bottom: 40, left: 64};
  var CSS = [
    ".ca-chart{position:relative;font:12px system-ui,sans-serif;color:#1c2127;margin:0 0 14px}",
    ".ca-chart h3{font-size:13px;margin:0 0 4px}",
    ".ca-chart svg{display:block;background:#fafbfc;border:1px solid #eef0f2;border-radius:4px}",
    ".ca-chart .ca-legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:4px 0 0}",
    ".ca-chart .ca-legend i{display:inline-block;width:14px;height:3px;margin:0 5px 3px 0;",
    "vertical-align:middle}",
    ".ca-chart .ca-tip{position:absolute;pointer-events:none;background:rgba(28,33,39,.92);",
    "color:#fff;padding:5px 8px;border-radius:4px;white-space:nowrap;display:none;z-index:5}",
    ".ca-chart .ca-empty{color:#738091;padding:8px 0}",
    ".ca-chart .ca-log{font-weight:normal;color:#5c7080;margin-left:10px;font-size:11px}",
    ".ca-chart .ca-log input{vertical-align:middle;margin:0 3px 0 0}",
    ".ca-chart .ca-legend i.dot{width:8px;height:8px;border-radius:50%;margin-bottom:1px}"
  ].join("");

  function el(tag, attrs, parent) {
    var node = document.createElementNS(NS, tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) parent.appendChild(node);
    return node;
  }

  function addStyle() {
    if (document.getElementById("ca-chart-style")) return;
    var style = document.createElement("style");
    style.id = "ca-chart-style";
    style.textContent = CSS;
    document.head.appendChild(style);
  }

  function format(v) {
    if (v === null || v === undefined || !isFinite(v)) return "\u2013";
    var a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(2);
    return String(+v.toPrecision(5));
  }

  function niceStep(span, count, integer) {
    var raw = span / Math.max(1, count);
    var mag = Math.pow(10, Math.floor(Math.log(raw) / Math.LN10));
    var n = raw / mag;
    var step = (n < 1.5 ? 1 : n < 3 ? 2 : n < 7 ? 5 : 10) * mag;
    return integer ? Math.max(1, Math.round(step)) : step;
  }

  function scale(lo, hi, count, integer) {
    if (lo === hi) {
      var d = lo === 0 ? 1 : Math.abs(lo) * 0.1;
      lo -= d; hi += d;
    }
    var step = niceStep(hi - lo, count, integer);
    var ticks = [];
    for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      ticks.push(+v.toPrecision(12));
    }
    return {lo: lo, hi: hi, ticks: ticks};
  }

  function clean(spec) {
    return (spec.series || []).map(function (s, i) {
      var points = (s.points || []).filter(function (p) {
        return p && p[0] !== null && isFinite(p[0]);
      }).slice().sort(function (a, b) { return a[0] - b[0]; });
      return {label: String(s.label), points: points, color: s.color || COLORS[i % COLORS.length],
              markers: !!s.markers, step: !!s.step, dash: s.dash || null,
              line: s.line !== false};
    });
  }

  function extent(series, axis) {
    var lo = Infinity, hi = -Infinity;
    series.forEach(function (s) {
      s.points.forEach(function (p) {
        var v = p[axis];
        if (v !== null && isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
      });
    });
    return lo <= hi ? [lo, hi] : null;
  }

  function pathOf(s, sx, sy) {
    var d = [], pen = false;
    s.points.forEach(function (p) {
      if (p[1] === null || !isFinite(p[1])) { pen = false; return; }
      var x = sx(p[0]).toFixed(1), y = sy(p[1]).toFixed(1);
      if (pen && s.step) d.push("H" + x + "V" + y);
      else d.push((pen ? "L" : "M") + x + "," + y);
      pen = true;
    });
    return d.join("");
  }

  function nearest(points, x) {
    var lo = 0, hi = points.length - 1;
    if (hi < 0) return null;
    while (hi - lo > 1) {
      var mid = (lo + hi) >> 1;
      if (points[mid][0] < x) lo = mid; else hi = mid;
    }
    return Math.abs(points[lo][0] - x) <= Math.abs(points[hi][0] - x) ? points[lo] : points[hi];
  }

  function drawAxes(svg, xs, ys, sx, sy, box, yText) {
    var g = el("g", {"class": "ca-axes", "font-size": "11", fill: "#5c7080"}, svg);
    ys.ticks.forEach(function (v) {
      var y = sy(v).toFixed(1);
      el("line", {x1: box.x0, x2: box.x1, y1: y, y2: y, stroke: "#e6e9ed"}, g);
      el("text", {x: box.x0 - 6, y: y, "text-anchor": "end", "dominant-baseline": "middle"}, g)
        .textContent = yText(v);
    });
    xs.ticks.forEach(function (v) {
      var x = sx(v).toFixed(1);
      el("line", {x1: x, x2: x, y1: box.y1, y2: box.y1 + 4, stroke: "#8a9ba8"}, g);
      el("text", {x: x, y: box.y1 + 16, "text-anchor": "middle"}, g).textContent = format(v);
    });
    el("line", {x1: box.x0, x2: box.x1, y1: box.y1, y2: box.y1, stroke: "#8a9ba8"}, g);
    el("line", {x1: box.x0, x2: box.x0, y1: box.y0, y2: box.y1, stroke: "#8a9ba8"}, g);
    return g;
  }

  function drawSeries(svg, series, sx, sy) {
    series.forEach(function (s) {
      var drawn = s.points.filter(function (p) { return p[1] !== null && isFinite(p[1]); });
      var attrs = {d: pathOf(s, sx, sy), fill: "none", stroke: s.line ? s.color : "none",
                   "stroke-width": "1.8",
                   "data-label": s.label, "data-points": String(drawn.length),
                   "class": "ca-series"};
      if (s.dash) attrs["stroke-dasharray"] = s.dash;
      el("path", attrs, svg);
      if (s.markers || drawn.length === 1) {
        drawn.forEach(function (p) {
          el("circle", {cx: sx(p[0]).toFixed(1), cy: sy(p[1]).toFixed(1), r: "3",
                        fill: s.color}, svg);
        });
      }
    });
  }

  function legend(box, series) {
    var div = document.createElement("div");
    div.className = "ca-legend";
    series.forEach(function (s) {
      var item = document.createElement("span");
      var swatch = document.createElement("i");
      swatch.style.background = s.color;
      if (!s.line) swatch.className = "dot";
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(s.label));
      div.appendChild(item);
    });
    box.appendChild(div);
  }

  function hover(box, svg, series, sx, sy, xs, area, xLabel) {
    var tip = document.createElement("div");
    tip.className = "ca-tip";
    box.appendChild(tip);
    var guide = el("line", {y1: area.y0, y2: area.y1, stroke: "#8a9ba8",
                            "stroke-dasharray": "3 3", visibility: "hidden"}, svg);
    var dots = series.map(function (s) {
      return el("circle", {r: "4", fill: s.color, visibility: "hidden"}, svg);
    });
    var overlay = el("rect", {x: area.x0, y: area.y0, width: area.x1 - area.x0,
                              height: area.y1 - area.y0, fill: "transparent",
                              "class": "ca-overlay"}, svg);
    overlay.addEventListener("mousemove", function (ev) {
      var r = svg.getBoundingClientRect();
      var px = ev.clientX - r.left;
      var x = xs.lo + (px - area.x0) / (area.x1 - area.x0) * (xs.hi - xs.lo);
      var hits = series.map(function (s) {
        return nearest(s.points.filter(function (p) { return p[1] !== null; }), x);
      });
      var at = null;
      hits.forEach(function (p) {
        if (p && (at === null || Math.abs(p[0] - x) < Math.abs(at - x))) at = p[0];
      });
      if (at === null) return;
      var lines = [(xLabel || "step") + " " + format(at)];
      hits.forEach(function (p, i) {
        var shown = p && p[0] === at;
        dots[i].setAttribute("visibility", shown ? "visible" : "hidden");
        if (!shown) return;
        dots[i].setAttribute("cx", sx(p[0]));
        dots[i].setAttribute("cy", sy(p[1]));
        lines.push(series[i].label + ": " + format(p.length > 2 ? p[2] : p[1]));
      });
      guide.setAttribute("x1", sx(at)); guide.setAttribute("x2", sx(at));
      guide.setAttribute("visibility", "visible");
      tip.textContent = "";
      lines.forEach(function (text, i) {
        var row = document.createElement("div");
        row.textContent = text;
        if (i === 0) row.style.opacity = "0.75";
        tip.appendChild(row);
      });
      tip.style.display = "block";
      var outer = box.getBoundingClientRect();
      var left = sx(at) + 12;
      if (left + tip.offsetWidth > area.x1) left = sx(at) - tip.offsetWidth - 12;
      tip.style.left = Math.max(0, r.left - outer.left + left) + "px";
      tip.style.top = (r.top - outer.top + area.y0 + 4) + "px";
    });
    overlay.addEventListener("mouseleave", function () {
      tip.style.display = "none";
      guide.setAttribute("visibility", "hidden");
      dots.forEach(function (d) { d.setAttribute("visibility", "hidden"); });
    });
  }

  /* A "log" box in the title when every value is positive; ticked (the choice is kept on the
   * element, so a redraw keeps it), the values are drawn on a log10 axis: each point becomes
   * [x, log10(y), y] (the tooltip shows y). Returns whether the axis is logarithmic. */
  function logToggle(box, title, series, spec) {
    var positive = series.every(function (s) {
      return s.points.every(function (p) { return p[1] === null || !isFinite(p[1]) || p[1] > 0; });
    });
    var any = series.some(function (s) { return s.points.length > 0; });
    if (!positive || !any || spec.log === false) return false;
    var on = box.dataset.logy === "1";
    var label = document.createElement("label");
    label.className = "ca-log";
    var tick = document.createElement("input");
    tick.type = "checkbox";
    tick.checked = on;
    tick.onchange = function () {
      box.dataset.logy = tick.checked ? "1" : "0";
      line(box, spec);
    };
    label.appendChild(tick);
    label.appendChild(document.createTextNode("log"));
    title.appendChild(label);
    if (on) {
      series.forEach(function (s) {
        s.points = s.points.map(function (p) {
          return p[1] === null || !isFinite(p[1]) ? p : [p[0], Math.log(p[1]) / Math.LN10, p[1]];
        });
      });
    }
    return on;
  }

  function line(target, spec) {
    addStyle();
    var box = typeof target === "string" ? document.getElementById(target) : target;
    box.textContent = "";
    box.classList.add("ca-chart");
    var h = document.createElement("h3");
    h.textContent = spec.title || "";
    box.appendChild(h);
    var series = clean(spec);
    var logY = logToggle(box, h, series, spec);
    var xr = extent(series, 0), yr = extent(series, 1);
    if (!xr || !yr) {
      var empty = document.createElement("div");
      empty.className = "ca-empty";
      empty.textContent = spec.empty || "No values yet.";
      box.appendChild(empty);
      return box;
    }
    var width = spec.width || Math.max(320, box.clientWidth || 640);
    var height = spec.height || 260;
    var area = {x0: PAD.left, x1: width - PAD.right, y0: PAD.top, y1: height - PAD.bottom};
    var integer = series.every(function (s) {
      return s.points.every(function (p) { return Math.round(p[0]) === p[0]; });
    });
    var xs = scale(xr[0], xr[1], Math.max(2, Math.floor((area.x1 - area.x0) / 90)), integer);
    var pad = (yr[1] - yr[0]) * 0.05;
    var ys = scale(yr[0] - pad, yr[1] + pad, Math.max(2, Math.floor((area.y1 - area.y0) / 45)));
    var sx = function (x) { return area.x0 + (x - xs.lo) / (xs.hi - xs.lo) * (area.x1 - area.x0); };
    var sy = function (y) { return area.y1 - (y - ys.lo) / (ys.hi - ys.lo) * (area.y1 - area.y0); };
    var svg = el("svg", {width: width, height: height, viewBox: "0 0 " + width + " " + height,
                         role: "img", "aria-label": spec.title || "chart"});
    box.appendChild(svg);
    drawAxes(svg, xs, ys, sx, sy, area, logY ? function (v) { return format(Math.pow(10, v)); } : format);
    if (spec.xLabel) {
      el("text", {x: (area.x0 + area.x1) / 2, y: height - 6, "text-anchor": "middle",
                  "font-size": "11", fill: "#5c7080"}, svg).textContent = spec.xLabel;
    }
    drawSeries(svg, series, sx, sy);
    legend(box, series);
    hover(box, svg, series, sx, sy, xs, area, spec.xLabel);
    return box;
  }

  window.CeleryAgentCharts = {line: line, colors: COLORS, format: format};
})();
