// Aether console: live updates from the cluster event stream, CSRF on htmx requests.
// No inline script anywhere (the Content-Security-Policy forbids it): pages declare
// what they need with data- attributes.
//
//   <body data-events="type type ...">   the event types this page listens to
//   <section data-refresh="type type" hx-get=... hx-trigger="refresh">
//                                         re-fetched (debounced) when one arrives
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  document.addEventListener("htmx:configRequest", function (e) {
    var token = csrfToken();
    if (token) { e.detail.headers["X-CSRF-Token"] = token; }
  });

  var pending = new Map();  // element -> timer: one refresh per element per burst
  function refresh(el) {
    if (pending.has(el)) { return; }
    pending.set(el, setTimeout(function () {
      pending.delete(el);
      if (document.body.contains(el) && window.htmx) { window.htmx.trigger(el, "refresh"); }
    }, 150));
  }

  function refreshFor(type) {
    document.querySelectorAll("[data-refresh]").forEach(function (el) {
      var types = el.getAttribute("data-refresh").split(/\s+/);
      if (types.indexOf(type) >= 0 || types.indexOf("*") >= 0) { refresh(el); }
    });
    document.dispatchEvent(new CustomEvent("aether:event", { detail: { type: type } }));
  }

  function refreshAll() {
    document.querySelectorAll("[data-refresh]").forEach(refresh);
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
      var was = stale;
      setStale(false);
      if (was) { refreshAll(); }  // catch up on what happened while disconnected
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
