// Aether console: the run view follows its run. While the run is active
// (#run-live data-run-active="true") the page is read again every POLL_MS and the live
// region replaced by the fresh one; it stops once the run is final. A region holding
// a field being typed in is left alone until the next round; a 401 or 404 ends it
// (the banner stays). No inline script (CSP).
(function () {
  "use strict";

  var POLL_MS = 1200;
  var ID = "run-live";
  var gone = false;  // the page cannot be read again: stop asking

  function active() {
    var region = document.getElementById(ID);
    return region !== null && region.getAttribute("data-run-active") === "true";
  }

  function editing(region) {
    var focused = document.activeElement;
    return focused && region.contains(focused) && /^(INPUT|SELECT|TEXTAREA)$/.test(focused.tagName);
  }

  function stale(value) {
    var banner = document.getElementById("stale");
    if (banner) { banner.hidden = !value; }
    document.body.setAttribute("data-live", value ? "stale" : "live");
  }

  function swap(html) {
    var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(ID);
    var old = document.getElementById(ID);
    if (fresh && old && !editing(old)) {
      old.replaceWith(document.importNode(fresh, true));
      document.dispatchEvent(new CustomEvent("aether:refreshed", { detail: { ids: [ID] } }));
    }
  }

  function poll() {
    if (!active()) { document.body.setAttribute("data-live", "done"); return; }
    fetch(window.location.pathname, { credentials: "same-origin", headers: { "X-Aether-Refresh": "1" } })
      .then(function (r) {
        if (r.status === 401 || r.status === 404) { gone = true; }  // signed out, or no such run
        if (!r.ok) { stale(true); return null; }
        stale(false);
        return r.text();
      })
      .then(function (html) { if (html !== null) { swap(html); } })
      .catch(function () { stale(true); })
      .then(function () { if (!gone) { setTimeout(poll, POLL_MS); } });
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (active()) { setTimeout(poll, POLL_MS); }
  });
}());
