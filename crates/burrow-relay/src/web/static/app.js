// Fleet page: live rows over server-sent events (the server renders them; this only swaps
// them in), and the search box applied as it is typed.
(function () {
  "use strict";
  var rows = document.getElementById("fleet-rows");
  if (rows && window.EventSource) {
    var es = new EventSource("/events" + location.search);
    es.addEventListener("rows", function (e) {
      rows.innerHTML = e.data;
    });
    es.addEventListener("count", function (e) {
      var c = document.getElementById("fleet-count");
      if (c) c.textContent = e.data;
    });
  }
  // The For column counts on between updates (the relay sends rows only when they change).
  function span(s) {
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h";
  }
  if (rows) {
    setInterval(function () {
      var now = Date.now() / 1000;
      rows.querySelectorAll("td.for[data-since]").forEach(function (td) {
        var t = parseInt(td.getAttribute("data-since"), 10);
        if (!isNaN(t)) td.textContent = span(now - t);
      });
    }, 5000);
  }
  var search = document.getElementById("fleet-search");
  if (search) {
    var timer = null;
    search.addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { search.form.submit(); }, 400);
    });
  }
})();
