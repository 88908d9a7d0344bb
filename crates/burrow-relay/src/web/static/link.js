// Exchanges a one-time link's secret (in the URL fragment, which browsers never send) for a
// session cookie, then moves on to the fleet page.
(function () {
  "use strict";
  var token = location.hash.slice(1);
  // The secret leaves the address bar and the history at once.
  history.replaceState(null, "", location.pathname);
  var status = document.getElementById("status");
  if (!token) {
    status.textContent = "This link has no secret in it: run ssh OPERATOR@relay web for a new one.";
    return;
  }
  fetch("/login/link", {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: "token=" + encodeURIComponent(token),
    credentials: "same-origin",
    redirect: "manual",
  }).then(function (r) {
    if (r.type === "opaqueredirect" || r.ok) {
      location.replace("/");
    } else {
      return r.text().then(function (t) {
        status.textContent = t;
        status.className = "error";
      });
    }
  }, function (e) {
    status.textContent = "The relay did not answer: " + e;
  });
})();
