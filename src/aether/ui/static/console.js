// Aether console: live pages from the cluster event stream.
// No inline script anywhere (the Content-Security-Policy forbids it): pages declare
// what they need with data- attributes.
//
//   <body data-events="type type ...">    the event types this page listens to
//   <section id="x" data-src="/ui/page?q" data-refresh="type type">
//                                          a live region: when one of its types
//                                          arrives, the page at data-src is read
//                                          again and the region replaced by the
//                                          element with the same id
//
// Regions that share a URL are refreshed by one request per burst of events
// (150 ms); a late answer never overwrites a newer one. The first `ready` of the
// stream also refreshes every region: what changed between rendering the page
// and connecting the stream is not lost. While the stream is down a banner says
// the page may be stale; EventSource reconnects by itself and the page catches up.
(function () {
  "use strict";

  var DEBOUNCE_MS = 150;
  var dirty = new Map();    // url -> Set of region ids to replace
  var timer = null;
  var sent = new Map();     // url -> sequence number of the newest request
  var applied = new Map();  // url -> sequence number of the newest answer applied

  function srcOf(el) {
    return el.getAttribute("data-src") || window.location.pathname + window.location.search;
  }

  function mark(el) {
    if (!el.id) { return; }
    var url = srcOf(el);
    if (!dirty.has(url)) { dirty.set(url, new Set()); }
    dirty.get(url).add(el.id);
    if (!timer) { timer = setTimeout(flush, DEBOUNCE_MS); }
  }

  function editing(region) {
    var active = document.activeElement;
    return active && region.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
  }

  function swap(doc, ids) {
    ids.forEach(function (id) {
      var old = document.getElementById(id);
      var fresh = doc.getElementById(id);
      if (!old || !fresh) { return; }
      if (editing(old)) {  // never pull a form from under the user: try again later
        setTimeout(function () { mark(old); }, 2000);
        return;
      }
      old.replaceWith(document.importNode(fresh, true));
    });
    document.dispatchEvent(new CustomEvent("aether:refreshed", { detail: { ids: Array.from(ids) } }));
  }

  function flush() {
    timer = null;
    var batch = dirty;
    dirty = new Map();
    batch.forEach(function (ids, url) {
      var seq = (sent.get(url) || 0) + 1;
      sent.set(url, seq);
      fetch(url, { credentials: "same-origin", headers: { "X-Aether-Refresh": "1" } })
        .then(function (r) {
          if (r.status === 401) { setStale(true); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) {
          if (html === null || seq < (applied.get(url) || 0)) { return; }
          applied.set(url, seq);
          swap(new DOMParser().parseFromString(html, "text/html"), ids);
        })
        .catch(function () { setStale(true); });
    });
  }

  function refreshFor(type) {
    document.querySelectorAll("[data-refresh]").forEach(function (el) {
      var types = el.getAttribute("data-refresh").split(/\s+/);
      if (types.indexOf(type) >= 0 || types.indexOf("*") >= 0) { mark(el); }
    });
    document.dispatchEvent(new CustomEvent("aether:event", { detail: { type: type } }));
  }

  function refreshAll() {
    document.querySelectorAll("[data-refresh]").forEach(mark);
  }

  var source = null;
  var stale = false;
  function setStale(value) {
    stale = value;
    var banner = document.getElementById("stale");
    if (banner) { banner.hidden = !value; }
    document.body.classList.toggle("is-stale", value);
    document.body.setAttribute("data-live", value ? "stale" : "live");
  }

  function connect() {
    var wanted = (document.body.getAttribute("data-events") || "").trim();
    if (!wanted || !window.EventSource) { return; }
    var url = "/api/v1/events?" + wanted.split(/\s+/).map(function (t) {
      return "type=" + encodeURIComponent(t);
    }).join("&");
    source = new EventSource(url);
    source.addEventListener("ready", function () {
      setStale(false);
      refreshAll();  // catch up on what changed since the page (or the last stream) was read
    });
    source.addEventListener("gap", function () { setStale(false); refreshAll(); });
    wanted.split(/\s+/).forEach(function (type) {
      source.addEventListener(type, function (msg) {
        var data = null;
        try { data = JSON.parse(msg.data); } catch (err) { data = null; }
        refreshFor(type);
        document.dispatchEvent(new CustomEvent("aether:" + type, { detail: data }));
      });
    });
    source.onerror = function () {
      setStale(true);
      if (source.readyState === EventSource.CLOSED) {  // refused (signed out?): retry later
        source = null;
        setTimeout(connect, 2000);
      }
    };
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.body.setAttribute("data-live", "connecting");
    connect();
    // a button may ask for confirmation: <button data-confirm="Really?">
    document.addEventListener("submit", function (e) {
      var button = e.submitter;
      var text = button && button.getAttribute("data-confirm");
      if (text && !window.confirm(text)) { e.preventDefault(); }
    });
  });
  window.addEventListener("beforeunload", function () { if (source) { source.close(); } });
}());
