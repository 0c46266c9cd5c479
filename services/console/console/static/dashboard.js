// Supervisor charts (Chart.js, served by the console) from the JSON in #numbers[data-charts].
// The figures, charts and queue are one htmx fragment (#numbers) refreshed on a live event
// and every 20 s; after each swap the charts are drawn again from the new JSON, and the
// figure tables the reader had opened stay open.
(function () {
  "use strict";
  var COLORS = ["#0b57d0", "#1e7a46", "#8a5a00", "#b3261e", "#6750a4", "#12324f"];
  var charts = [];
  var openDetails = [];
  function draw(key, data, type) {
    var el = document.getElementById("chart-" + key);
    if (!el || !data || !window.Chart) return;
    var labels = Object.keys(data);
    charts.push(new window.Chart(el, {
      type: type,
      data: { labels: labels.map(function (k) { return k.replace(/_/g, " "); }),
              datasets: [{ label: el.getAttribute("data-unit"),
                           data: labels.map(function (k) { return data[k]; }),
                           backgroundColor: type === "line" ? "#b3261e" : COLORS,
                           borderColor: type === "line" ? "#b3261e" : COLORS }] },
      options: { indexAxis: type === "bar" ? "y" : "x", animation: false, responsive: true,
                 plugins: { legend: { display: false } } }
    }));
  }
  function drawAll() {
    charts.forEach(function (chart) { chart.destroy(); });
    charts = [];
    // the data rides on the fragment itself: htmx drops <script> blocks it swaps in
    var node = document.getElementById("numbers");
    if (!node || !node.getAttribute("data-charts")) return;
    var d = JSON.parse(node.getAttribute("data-charts"));
    draw("funnel", d.funnel, "bar");
    draw("timings", d.timings, "bar");
    draw("sla_by_week", d.sla_by_week, "line");
    draw("unmatched_by_need", d.unmatched_by_need, "bar");
    draw("unmatched_by_area", d.unmatched_by_area, "bar");
    document.body.setAttribute("data-charts-drawn", String(Date.now()));
  }
  document.addEventListener("DOMContentLoaded", drawAll);
  // the dashboard's only htmx fragment is #numbers, so every swap here is a refresh of it
  document.addEventListener("htmx:beforeSwap", function () {
    openDetails = [];
    document.querySelectorAll("#numbers section.chart details[open]").forEach(function (el) {
      openDetails.push(el.closest("section").getAttribute("aria-labelledby"));
    });
  });
  // htmx:load fires on the new #numbers (the old one, an outerHTML swap's target, is detached
  // by then, so events fired on it never reach the document)
  document.addEventListener("htmx:load", function (event) {
    if (!event.target || event.target.id !== "numbers") return;
    openDetails.forEach(function (id) {
      var el = document.querySelector("section[aria-labelledby='" + id + "'] details");
      if (el) el.open = true;
    });
    drawAll();
  });
})();
