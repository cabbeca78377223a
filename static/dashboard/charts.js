// Draws every <canvas data-chart="…" data-source="<json_script id>"> with Chart.js; re-runs after
// each htmx swap. The data comes from the server-rendered json_script tags (no extra request).
(function () {
  "use strict";
  var COLORS = ["#2f5bea", "#12805c", "#b54708", "#9e165f", "#0e7090", "#6938ef", "#c11574", "#4e5ba6", "#667085", "#e62e05"];
  var charts = new WeakMap();

  function read(id) {
    var el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }
  function label(iso) {
    var d = new Date(iso);
    return d.toISOString().slice(5, 16).replace("T", " ");
  }
  function line(data, datasets, extra) {
    return { type: "line", data: { labels: data.labels.map(label), datasets: datasets },
      options: Object.assign({ animation: false, maintainAspectRatio: false, spanGaps: true, interaction: { mode: "index", intersect: false },
        plugins: { legend: { position: "bottom" } }, elements: { point: { radius: data.labels.length < 40 ? 3 : 0 } } }, extra || {}) };
  }
  var builders = {
    requests: function (s) {
      return { type: "bar", data: { labels: s.labels.map(label), datasets: [{ label: "requests", data: s.requests, backgroundColor: COLORS[0] }] },
        options: { animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } } } };
    },
    spend: function (s) {
      var saving = s.spend.map(function (v, i) { return +(s.baseline[i] - v).toFixed(6); });
      return line(s, [
        { label: "spend (predicted)", data: s.spend, borderColor: COLORS[0] },
        { label: "everything to the best model", data: s.baseline, borderColor: COLORS[9], borderDash: [5, 4] },
        { label: "saving, 95% low", data: s.savings_low, borderColor: "rgba(18,128,92,0)", backgroundColor: "rgba(18,128,92,.18)", fill: "+1" },
        { label: "saving, 95% high", data: s.savings_high, borderColor: "rgba(18,128,92,0)", fill: false },
        { label: "saving", data: saving, borderColor: COLORS[1] }
      ], { plugins: { legend: { position: "bottom", labels: { filter: function (item) { return item.text.indexOf("95%") < 0; } } } } });
    },
    latency: function (s) {
      return line(s, [{ label: "p50 ms", data: s.p50, borderColor: COLORS[0] }, { label: "p95 ms", data: s.p95, borderColor: COLORS[2] }]);
    },
    feedback: function (s) {
      return line(s, [{ label: "mean feedback score", data: s.feedback, borderColor: COLORS[3] }], { scales: { y: { min: 0, max: 1 } } });
    },
    mix: function (rows) {
      return { type: "doughnut", data: { labels: rows.map(function (r) { return r[0]; }),
        datasets: [{ data: rows.map(function (r) { return r[1]; }), backgroundColor: COLORS }] },
        options: { animation: false, maintainAspectRatio: false, plugins: { legend: { position: "right" } } } };
    },
    calibration: function (bins) {
      return { type: "scatter", data: { datasets: [
          { label: "bins (predicted, observed)", data: bins.map(function (b) { return { x: b.predicted, y: b.observed }; }), backgroundColor: COLORS[0], pointRadius: 4, showLine: true, borderColor: COLORS[0] },
          { label: "perfect calibration", data: [{ x: 0, y: 0 }, { x: 1, y: 1 }], showLine: true, borderColor: "#98a2b3", borderDash: [4, 4], pointRadius: 0 }] },
        options: { animation: false, maintainAspectRatio: false, scales: { x: { min: 0, max: 1, title: { display: true, text: "predicted" } }, y: { min: 0, max: 1, title: { display: true, text: "observed" } } } } };
    },
    // one experiment metric per arm: the 95% interval as a floating bar, the mean as a point
    arm_interval: function (s) {
      var money = s.unit === "usd";
      var fmt = function (v) {
        if (v === null || v === undefined) return "–";
        var text = Math.abs(Number(v)).toPrecision(3);
        return (v < 0 ? "-" : "") + (money ? "$" : "") + text;
      };
      return { type: "bar", data: { labels: s.labels, datasets: [
          { type: "bar", label: "95% CI", data: s.labels.map(function (_, i) { return s.low[i] === null ? null : [s.low[i], s.high[i]]; }),
            backgroundColor: s.labels.map(function (_, i) { return COLORS[i % COLORS.length] + "40"; }),
            borderColor: s.labels.map(function (_, i) { return COLORS[i % COLORS.length]; }), borderWidth: 1, barPercentage: 0.5 },
          { type: "line", label: "mean", data: s.mean, showLine: false, pointRadius: 5, pointStyle: "rectRot",
            backgroundColor: "#1d2330", borderColor: "#1d2330" }] },
        options: { animation: false, maintainAspectRatio: false,
          plugins: { legend: { display: false }, tooltip: { callbacks: { label: function (ctx) {
            var i = ctx.dataIndex;
            return ctx.dataset.label === "mean" ? "mean " + fmt(s.mean[i]) + " (n=" + s.n[i] + ")" : "95% CI " + fmt(s.low[i]) + " – " + fmt(s.high[i]);
          } } } },
          scales: { y: { beginAtZero: false, ticks: { callback: function (v) { return fmt(v); } } } } } };
    },
    importance: function (pairs) {
      return { type: "bar", data: { labels: pairs.map(function (p) { return p[0]; }), datasets: [{ label: "importance", data: pairs.map(function (p) { return p[1]; }), backgroundColor: COLORS[0] }] },
        options: { indexAxis: "y", animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } },
          scales: { y: { ticks: { autoSkip: false, font: { size: 11 } } } } } };
    }
  };

  function draw(root) {
    if (!window.Chart) return;
    (root || document).querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var build = builders[canvas.dataset.chart];
      var data = read(canvas.dataset.source);
      if (!build || !data) return;
      if (charts.has(canvas)) charts.get(canvas).destroy();
      charts.set(canvas, new window.Chart(canvas, build(data)));
    });
  }
  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSettle", function (e) { draw(e.target); });
})();
