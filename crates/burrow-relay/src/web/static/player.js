// Recording page: asciinema-player on the recording's file, with seeking.
(function () {
  "use strict";
  var el = document.getElementById("player");
  if (!el || !window.AsciinemaPlayer) return;
  window.burrowPlayer = AsciinemaPlayer.create(el.getAttribute("data-src"), el, {
    controls: true,
    idleTimeLimit: 2,
    fit: "width",
  });
})();
