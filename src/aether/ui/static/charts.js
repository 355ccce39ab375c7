// Aether console: time-series charts (uPlot) from the node and app telemetry.
//
//   <figure class="chart" data-kind="nodes|apps" data-name="NAME"
//           data-fields="cpu memory_fraction" data-labels="CPU|Memory"
//           data-scale="100" data-unit="%" data-range="300">
//     <figcaption>Title <span class="latest"></span></figcaption>
//   </figure>
//
// data-range (seconds): up to 7200 reads the leader's 1 s window
// (/api/v1/metrics/{kind}/{name}?seconds=), beyond it the per-minute roll-ups
// (/api/v1/metrics/rollups). The last 5 minutes (range 300) stay live: one
// /api/v1/metrics/stream connection per page feeds every live chart each second.
//
// The same stream keeps single figures current (a table cell, say):
//   <td data-metric="nodes" data-name="NAME" data-field="cpu" data-scale="100"
//       data-unit="%">12.0%</td>
(function () {
  "use strict";
  var WINDOW = 7200;
  var COLORS = ["#0969da", "#cf222e", "#1a7f37", "#9a6700", "#8250df"];
  var charts = [];

  function num(el, name, fallback) {
    var v = parseFloat(el.getAttribute(name));
    return isNaN(v) ? fallback : v;
  }

  function Chart(el) {
    this.el = el;
    this.kind = el.getAttribute("data-kind");
    this.name = el.getAttribute("data-name");
    this.fields = el.getAttribute("data-fields").split(/\s+/);
    this.labels = (el.getAttribute("data-labels") || "").split("|");
    this.scale = num(el, "data-scale", 1);
    this.unit = el.getAttribute("data-unit") || "";
    this.range = num(el, "data-range", 300);
    this.live = this.range <= 300;
    this.data = [[]].concat(this.fields.map(function () { return []; }));
    this.plot = null;
  }

  Chart.prototype.value = function (v) {
    return v === null || v === undefined ? null : v * this.scale;
  };

  Chart.prototype.push = function (ts, row) {
    var self = this;
    if (this.data[0].length && ts <= this.data[0][this.data[0].length - 1]) { return; }
    this.data[0].push(ts);
    this.fields.forEach(function (f, i) { self.data[i + 1].push(self.value(row[f])); });
  };

  Chart.prototype.trim = function (now) {
    var cut = 0;
    while (cut < this.data[0].length && this.data[0][cut] < now - this.range) { cut++; }
    if (cut) { this.data = this.data.map(function (s) { return s.slice(cut); }); }
  };

  Chart.prototype.latest = function () {
    var span = this.el.querySelector(".latest");
    if (!span) { return; }
    var n = this.data[0].length;
    if (!n) { span.textContent = "no telemetry yet"; return; }
    var self = this;
    span.textContent = this.fields.map(function (f, i) {
      var v = self.data[i + 1][n - 1];
      return (self.labels[i] || f) + " " + (v === null ? "-" : v.toFixed(1)) + self.unit;
    }).join(" · ");
  };

  Chart.prototype.draw = function () {
    var width = Math.max(240, this.el.clientWidth - 8);
    if (!this.plot) {
      var self = this;
      var series = [{}].concat(this.fields.map(function (f, i) {
        return { label: self.labels[i] || f, stroke: COLORS[i % COLORS.length], width: 1.5,
                 value: function (u, v) { return v === null ? "-" : v.toFixed(1) + self.unit; } };
      }));
      var holder = document.createElement("div");
      holder.className = "plot";
      this.el.appendChild(holder);
      // the legend names the series (values are in the caption); the y axis is wide
      // enough for "100.5 KiB/s"
      this.plot = new window.uPlot({ width: width, height: 180, series: series,
        legend: { live: false },
        axes: [{}, { size: 16 + 7 * (5 + this.unit.length), values: function (u, vals) {
          return vals.map(function (v) { return v + self.unit; });
        } }] }, this.data, holder);
    } else {
      this.plot.setData(this.data);
    }
    this.el.setAttribute("data-points", String(this.data[0].length));
    this.latest();
  };

  Chart.prototype.load = function () {
    var self = this;
    var now = Date.now() / 1000;
    var url;
    if (this.range <= WINDOW) {
      url = "/api/v1/metrics/" + this.kind + "/" + encodeURIComponent(this.name) +
        "?seconds=" + this.range;
    } else {
      url = "/api/v1/metrics/rollups?" + (this.kind === "nodes" ? "node=" : "app=") +
        encodeURIComponent(this.name) + "&since=" + Math.floor(now - this.range);
    }
    return fetch(url, { credentials: "same-origin" }).then(function (r) {
      return r.ok ? r.json() : [];
    }).then(function (rows) {
      (rows || []).forEach(function (row) {
        if (row.minute !== undefined) { self.push(row.minute, row.avg || {}); }
        else { self.push(row.ts, row); }
      });
      self.draw();
    }).catch(function () { self.draw(); });
  };

  // cells are looked up on each sample: console.js may have swapped the table meanwhile
  function updateCells(sample) {
    document.querySelectorAll("[data-metric]").forEach(function (el) {
      var row = (sample[el.getAttribute("data-metric")] || {})[el.getAttribute("data-name")];
      var v = row ? row[el.getAttribute("data-field")] : null;
      if (v === null || v === undefined) { return; }
      el.textContent = (v * num(el, "data-scale", 1)).toFixed(1) + (el.getAttribute("data-unit") || "");
    });
  }

  function listen() {
    var live = charts.filter(function (c) { return c.live; });
    var cells = document.querySelector("[data-metric]") !== null;
    if ((!live.length && !cells) || !window.EventSource) { return; }
    var stream = new EventSource("/api/v1/metrics/stream");
    stream.addEventListener("sample", function (msg) {
      var sample;
      try { sample = JSON.parse(msg.data); } catch (err) { return; }
      if (!sample) { return; }
      updateCells(sample);
      live.forEach(function (c) {
        var row = (sample[c.kind] || {})[c.name];
        if (!row) { return; }
        c.push(sample.ts, row);
        c.trim(sample.ts);
        c.draw();
      });
    });
    window.addEventListener("beforeunload", function () { stream.close(); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (window.uPlot) {
      document.querySelectorAll("figure.chart[data-kind]").forEach(function (el) {
        charts.push(new Chart(el));
      });
    }
    Promise.all(charts.map(function (c) { return c.load(); })).then(listen);
    window.addEventListener("resize", function () {
      charts.forEach(function (c) {
        if (c.plot) { c.plot.setSize({ width: Math.max(240, c.el.clientWidth - 8), height: 180 }); }
      });
    });
  });
}());
