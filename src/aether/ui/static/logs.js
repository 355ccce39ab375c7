// Aether console: an app's log lines as they arrive (the app page's #logs).
//
//   <pre id="logs" data-app="NAME" data-search="TEXT">…the tail, rendered by the server…</pre>
//
// Reads GET /api/v1/apps/NAME/logs?follow=true&tail=0 (the session cookie signs the
// request) with fetch() and a ReadableStream, and appends the new lines that
// contain data-search (any case). Keeps the newest MAX lines; reconnects when the
// stream ends.
(function () {
  "use strict";
  var MAX = 1000;

  function follow(pre) {
    var app = pre.getAttribute("data-app");
    var needle = (pre.getAttribute("data-search") || "").toLowerCase();
    var url = "/api/v1/apps/" + encodeURIComponent(app) + "/logs?follow=true&tail=0";
    var controller = new AbortController();
    var rest = "";

    function add(lines) {
      var atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      var text = lines.filter(function (line) {
        return !needle || line.toLowerCase().indexOf(needle) >= 0;
      }).map(function (line) { return line + "\n"; }).join("");
      if (!text) { return; }
      pre.appendChild(document.createTextNode(text));
      var all = pre.textContent.split("\n");
      if (all.length > MAX + 1) { pre.textContent = all.slice(all.length - MAX - 1).join("\n"); }
      if (atEnd) { pre.scrollTop = pre.scrollHeight; }
    }

    function read(reader, decoder) {
      return reader.read().then(function (chunk) {
        if (chunk.done) { return; }
        var parts = (rest + decoder.decode(chunk.value, { stream: true })).split("\n");
        rest = parts.pop();
        add(parts);
        return read(reader, decoder);
      });
    }

    function connect() {
      fetch(url, { credentials: "same-origin", signal: controller.signal }).then(function (r) {
        if (!r.ok || !r.body) { throw new Error("logs answered " + r.status); }
        pre.setAttribute("data-streaming", "yes");
        return read(r.body.getReader(), new TextDecoder());
      }).catch(function () { return null; }).then(function () {
        pre.setAttribute("data-streaming", "no");
        if (!controller.signal.aborted) { setTimeout(connect, 2000); }
      });
    }

    window.addEventListener("beforeunload", function () { controller.abort(); });
    connect();
  }

  document.addEventListener("DOMContentLoaded", function () {
    var pre = document.getElementById("logs");
    if (pre && window.fetch && window.ReadableStream) { follow(pre); }
  });
}());
