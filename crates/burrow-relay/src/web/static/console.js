// Console page: xterm.js on the console's WebSocket. Keystrokes go to the relay as typed
// (escapes included, as over SSH); the buttons send the same actions as the escapes.
(function () {
  "use strict";
  var el = document.getElementById("terminal");
  if (!el || !window.Terminal) return;
  var term = new Terminal({ cursorBlink: true, convertEol: false, scrollback: 5000 });
  var fit = window.FitAddon ? new FitAddon.FitAddon() : null;
  if (fit) term.loadAddon(fit);
  term.open(el);
  if (fit) fit.fit();
  var role = document.getElementById("role");
  var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + el.getAttribute("data-ws");
  var ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  window.burrowConsole = { term: term, ws: ws, write: false, text: "" };
  function send(msg) {
    if (ws.readyState === 1) ws.send(JSON.stringify(msg));
  }
  var decoder = new TextDecoder();
  ws.onopen = function () {
    send({ t: "resize", c: term.cols, r: term.rows });
    term.focus();
  };
  ws.onmessage = function (e) {
    if (typeof e.data === "string") {
      var m = JSON.parse(e.data);
      if (m.t === "remote") {
        // Held by another relay: who writes is in its banner and notices.
        role.textContent = "on relay " + m.relay;
        role.setAttribute("data-remote", m.relay);
      }
      if (m.t === "role") {
        window.burrowConsole.write = m.write;
        role.textContent = m.write ? "read-write" : (m.writer ? "read-only (" + m.writer + " writes)" : "read-only");
        role.setAttribute("data-write", m.write ? "1" : "0");
      }
      return;
    }
    var bytes = new Uint8Array(e.data);
    term.write(bytes);
    // What the terminal showed, for people and tests reading the page.
    window.burrowConsole.text += decoder.decode(bytes, { stream: true });
    if (window.burrowConsole.text.length > 200000) {
      window.burrowConsole.text = window.burrowConsole.text.slice(-100000);
    }
  };
  ws.onclose = function () {
    role.textContent = "disconnected";
    role.setAttribute("data-write", "0");
  };
  term.onData(function (d) { send({ t: "in", d: d }); });
  term.onResize(function (s) { send({ t: "resize", c: s.cols, r: s.rows }); });
  window.addEventListener("resize", function () { if (fit) fit.fit(); });
  function button(id, msg) {
    var b = document.getElementById(id);
    if (b) b.addEventListener("click", function () { send(typeof msg === "function" ? msg() : msg); term.focus(); });
  }
  button("take", { t: "write" });
  button("force", { t: "force" });
  button("spy", { t: "spy" });
  button("break", { t: "break" });
  button("replay", { t: "replay" });
  // Power goes only after the operator confirms, as ^Ec p asks for y.
  var power = document.getElementById("set-power");
  if (power) power.addEventListener("click", function () {
    var what = document.getElementById("power").value;
    var target = document.querySelector("h1").textContent;
    if (window.confirm("Power " + what + " " + target + "?")) send({ t: "power", do: what });
    term.focus();
  });
  button("set-baud", function () { return { t: "baud", rate: parseInt(document.getElementById("baud").value, 10) }; });
})();
