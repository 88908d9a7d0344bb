#!/usr/bin/env python3
"""A small web app on the device side of the web console's tests: a login that sets a cookie
and redirects by absolute paths, a page that needs the cookie, and a WebSocket echo.

Listens on 127.0.0.1 (a free port) and prints the port on its first line.
"""
import base64
import hashlib
import http.server
import socketserver
import struct
import sys

LOGIN = b"""<!doctype html><title>Device login</title>
<h1>Device login</h1><form method="post" action="login"><input name="user" id="user">
<button id="go">Log in</button></form>"""

HOME = """<!doctype html><title>Device home</title>
<h1 id="welcome">Welcome, %s</h1><p id="echo">no echo yet</p>
<script>
var ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host +
                       location.pathname.replace(/home$/, "ws"));
ws.onopen = function () { ws.send("ping through the relay"); };
ws.onmessage = function (e) { document.getElementById("echo").textContent = "echo: " + e.data; };
ws.onerror = function () { document.getElementById("echo").textContent = "websocket failed"; };
</script>"""


class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(body)

    def user(self):
        for part in self.headers.get("Cookie", "").split(";"):
            k, _, v = part.strip().partition("=")
            if k == "app_user":
                return v
        return None

    def do_GET(self):
        if self.path == "/":
            return self.send(302, headers=[("Location", "/login")])
        if self.path == "/login":
            return self.send(200, LOGIN)
        if self.path == "/home":
            user = self.user()
            if not user:
                return self.send(302, headers=[("Location", "/login")])
            return self.send(200, (HOME % user).encode())
        if self.path == "/ws" and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        return self.send(404, b"not found")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        form = dict(p.split("=", 1) for p in self.rfile.read(n).decode().split("&") if "=" in p)
        user = form.get("user") or "nobody"
        self.send(303, headers=[("Location", "/home"), ("Set-Cookie", "app_user=%s; Path=/; HttpOnly" % user)])

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"].strip()
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.wfile.flush()
        rf = self.rfile
        head = rf.read(2)
        if len(head) < 2:
            return  # closed before a frame (the relay cut the socket)
        b0, b1 = head
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", rf.read(2))[0]
        mask = rf.read(4)
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(rf.read(n)))
        reply = b"echo of " + data
        self.wfile.write(bytes([0x81, len(reply)]) + reply)
        self.wfile.flush()
        self.close_connection = True


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


if __name__ == "__main__":
    s = Server(("127.0.0.1", 0), App)
    print(s.server_address[1], flush=True)
    s.serve_forever()
