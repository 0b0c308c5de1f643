/* Draw the figures, then make the layer tables sortable and filterable. No framework. */
(function () {
  "use strict";
  var blob = document.getElementById("wciaudit-figures");
  var figures = JSON.parse(blob.textContent);
  var drawn = 0, missing = 0;
  var config = { responsive: true, displaylogo: false, scrollZoom: false };
  Object.keys(figures).forEach(function (id) {
    var el = document.getElementById(id);
    var fig = figures[id];
    if (!el) { return; }
    if (typeof Plotly === "undefined") {
      /* a page written with --plotly cdn, opened offline: say so where the chart would be */
      var note = document.createElement("p");
      note.className = "chart-missing";
      note.textContent = "This chart needs plotly.js, which this page loads from the network (it was written with --plotly cdn) and which did not load. Open the page online, or write it again with --plotly inline.";
      el.appendChild(note);
      el.classList.add("missing");
      missing += 1;
      return;
    }
    if (fig.names) {  /* layer names are stored once per figure, not once per trace */
      fig.data.forEach(function (trace) { if (trace.meta === "names") { trace.customdata = fig.names; } });
    }
    Plotly.newPlot(el, fig.data, fig.layout, config);
    drawn += 1;
  });
  document.body.setAttribute("data-charts", String(drawn));
  document.body.setAttribute("data-charts-missing", String(missing));
  if (!document.body.hasAttribute("data-errors")) { document.body.setAttribute("data-errors", "0"); }

  function key(cell, type) {
    if (type === "n") {
      var v = cell.getAttribute("data-v");
      if (v === null) { v = cell.textContent; }
      var x = parseFloat(v);
      return isNaN(x) ? null : x;
    }
    return cell.textContent.toLowerCase();
  }

  function sortBy(table, col, type, th) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var current = th.getAttribute("aria-sort");
    /* first click: numbers largest first, text A to Z; later clicks flip */
    var descending = current === null ? (type === "n" && col !== 0) : current === "ascending";
    rows.sort(function (a, b) {
      var x = key(a.cells[col], type), y = key(b.cells[col], type);
      if (x === y) { return 0; }
      if (x === null) { return 1; }   /* missing figures last, either way */
      if (y === null) { return -1; }
      var c = x < y ? -1 : 1;
      return descending ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  }

  function filter(table) {
    var text = document.querySelector('input.filter[data-table="' + table.id + '"]');
    var flagged = document.querySelector('input.flagged-only[data-table="' + table.id + '"]');
    var counter = document.querySelector('span.count[data-table="' + table.id + '"]');
    var q = text ? text.value.trim().toLowerCase() : "";
    var shown = 0, total = 0;
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      total += 1;
      var ok = (!q || r.textContent.toLowerCase().indexOf(q) !== -1) &&
               (!flagged || !flagged.checked || r.classList.contains("flagged"));
      r.classList.toggle("hidden", !ok);
      if (ok) { shown += 1; }
    });
    if (counter) { counter.textContent = shown === total ? total + " layers" : shown + " of " + total + " layers"; }
  }

  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      var button = th.querySelector("button");
      if (!button) { return; }
      button.addEventListener("click", function () { sortBy(table, col, button.getAttribute("data-type"), th); });
    });
    filter(table);
  });
  Array.prototype.forEach.call(document.querySelectorAll("input.filter, input.flagged-only"), function (input) {
    var table = document.getElementById(input.getAttribute("data-table"));
    input.addEventListener("input", function () { filter(table); });
    input.addEventListener("change", function () { filter(table); });
  });
})();
