/* Measures a rendered wciaudit page for tests/e2e/test_pages_browser.py and writes the
   result, as JSON, on <body data-probe>: for every chart, the labels the plotly toolbar
   covers and the labels a legend covers, the tick labels of the y axes; the chart places
   left undrawn (plotly.js did not load) and what they say; and every
   piece of a name or hash that the browser broke over two lines. */
window.addEventListener("load", function () {
  setTimeout(function () {
    "use strict";
    function box(el) {
      var r = el.getBoundingClientRect();
      return r.width > 0 && r.height > 0 ? [r.left, r.top, r.right, r.bottom] : null;
    }
    function overlap(a, b) {
      return !!(a && b && a[0] < b[2] - 0.5 && b[0] < a[2] - 0.5 && a[1] < b[3] - 0.5 && b[1] < a[3] - 0.5);
    }
    function label(el) { return (el.textContent || "").trim().slice(0, 60) || el.getAttribute("class"); }
    var labels = ".gtitle, .g-xtitle text, .g-ytitle text, .g-y2title text, .xtick text, .ytick text, " +
      ".y2tick text, .legendtext, .annotation-text, .cbtitle text, .cbaxis text";
    var out = { width: document.documentElement.clientWidth, charts: [], broken: [] };
    Array.prototype.forEach.call(document.querySelectorAll(".js-plotly-plot"), function (plot) {
      var bar = plot.querySelector(".modebar");
      var barBox = bar ? box(bar) : null;
      var legends = Array.prototype.map.call(plot.querySelectorAll(".legend .traces"), box);
      var under_toolbar = [], under_legend = [];
      Array.prototype.forEach.call(plot.querySelectorAll(labels), function (el) {
        var b = box(el);
        if (overlap(barBox, b)) { under_toolbar.push(label(el)); }
        if (!el.closest(".legend") && legends.some(function (l) { return overlap(l, b); })) {
          under_legend.push(label(el));
        }
      });
      out.charts.push({
        id: plot.id,
        toolbar: barBox !== null,
        under_toolbar: under_toolbar,
        under_legend: under_legend,
        y2ticks: Array.prototype.map.call(plot.querySelectorAll(".y2tick text"), function (t) { return t.textContent; }),
        yticks: Array.prototype.map.call(plot.querySelectorAll(".ytick text"), function (t) { return t.textContent; }),
        missing: Array.prototype.map.call(plot.querySelectorAll(".chart-missing"), function (t) { return t.textContent; })
      });
    });
    /* chart places that plotly did not draw into (a --plotly cdn page offline) */
    out.missing = Array.prototype.map.call(document.querySelectorAll(".chart.missing"), function (el) {
      var note = el.querySelector(".chart-missing");
      return { id: el.id, text: note ? note.textContent : "", box: note ? box(note) : null };
    });
    Array.prototype.forEach.call(document.querySelectorAll("td.name, code.hash"), function (cell) {
      Array.prototype.forEach.call(cell.childNodes, function (node) {
        if (node.nodeType !== 3 || !node.textContent.trim()) { return; }
        var range = document.createRange();
        range.selectNodeContents(node);
        var lines = {};
        Array.prototype.forEach.call(range.getClientRects(), function (r) {
          if (r.width > 0) { lines[Math.round(r.top)] = true; }
        });
        if (Object.keys(lines).length > 1) { out.broken.push(node.textContent); }
      });
    });
    document.body.setAttribute("data-probe", JSON.stringify(out));
  }, 1000);
});
