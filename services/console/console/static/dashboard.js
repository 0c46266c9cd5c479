// Supervisor charts from the JSON the page carries (Chart.js, served by the console).
(function () {
  "use strict";
  var COLORS = ["#0b57d0", "#1e7a46", "#8a5a00", "#b3261e", "#6750a4", "#12324f"];
  function draw(key, data, type) {
    var el = document.getElementById("chart-" + key);
    if (!el || !data || !window.Chart) return;
    var labels = Object.keys(data);
    new window.Chart(el, {
      type: type,
      data: { labels: labels.map(function (k) { return k.replace(/_/g, " "); }),
              datasets: [{ label: el.getAttribute("data-unit"),
                           data: labels.map(function (k) { return data[k]; }),
                           backgroundColor: type === "line" ? "#b3261e" : COLORS,
                           borderColor: type === "line" ? "#b3261e" : COLORS }] },
      options: { indexAxis: type === "bar" ? "y" : "x", animation: false, responsive: true,
                 plugins: { legend: { display: false } } }
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var node = document.getElementById("dashboard-data");
    if (!node) return;
    var d = JSON.parse(node.textContent);
    draw("funnel", d.funnel, "bar");
    draw("timings", d.timings, "bar");
    draw("sla_by_week", d.sla_by_week, "line");
    draw("unmatched_by_need", d.unmatched_by_need, "bar");
    draw("unmatched_by_area", d.unmatched_by_area, "bar");
  });
})();
