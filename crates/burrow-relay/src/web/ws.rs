//! WebSocket (RFC 6455) for the browser consoles: the opening handshake on hyper's upgrade,
//! and frames read and written on the upgraded connection. Frames from the browser are
//! untrusted: sizes are bounded and nothing here panics on what a peer sends.

use hyper::header::{self, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use super::http::{Body, Resp, text};

/// Largest message accepted from a browser (keystrokes, resizes, pastes).
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Checks a WebSocket opening request; returns the `101` answer to send, or the refusal.
pub(crate) fn accept<B>(req: &Request<B>) -> Result<Resp, Resp> {
    let h = req.headers();
    let has = |name: header::HeaderName, want: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(want))
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(text(
            StatusCode::BAD_REQUEST,
            "this address takes a WebSocket\n",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut r = text(StatusCode::UPGRADE_REQUIRED, "WebSocket version 13 only\n");
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(r);
    }
    let Some(key) = h
        .get(header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(text(StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key\n"));
    };
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{}{GUID}", key.trim()).as_bytes(),
    );
    let mut r = hyper::Response::new(Body::empty());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = r.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&base64(digest.as_ref())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(r)
}

/// Standard base64 with padding.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A message from the browser.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Text(String),
    Binary(Vec<u8>),
    /// The browser closed the socket (or broke the protocol).
    Close,
}

/// The reading half of a WebSocket.
pub(crate) struct Reader {
    io: ReadHalf<TokioIo<Upgraded>>,
}

/// The writing half of a WebSocket.
pub(crate) struct Writer {
    io: WriteHalf<TokioIo<Upgraded>>,
}

/// Splits an upgraded connection into its halves.
pub(crate) fn split(upgraded: Upgraded) -> (Reader, Writer) {
    let (r, w) = tokio::io::split(TokioIo::new(upgraded));
    (Reader { io: r }, Writer { io: w })
}

const OP_CONT: u8 = 0;
const OP_TEXT: u8 = 1;
const OP_BINARY: u8 = 2;
const OP_CLOSE: u8 = 8;
const OP_PING: u8 = 9;
const OP_PONG: u8 = 10;

/// A frame's head as parsed.
#[derive(Debug, PartialEq, Eq)]
struct Head {
    fin: bool,
    opcode: u8,
    masked: bool,
    len: u64,
}

impl Reader {
    /// The next message; pings are answered through `writer`'s queue by the caller's
    /// `pongs` (returned as `Binary` never: a ping's payload comes back as a pong at once).
    pub(crate) async fn next(&mut self, pong: &tokio::sync::mpsc::Sender<Vec<u8>>) -> Message {
        let mut message: Vec<u8> = Vec::new();
        let mut kind = None;
        loop {
            let Ok(head) = self.head().await else {
                return Message::Close;
            };
            // Browsers mask every frame they send (RFC 6455 section 5.1).
            if !head.masked || head.len > MAX_MESSAGE as u64 {
                return Message::Close;
            }
            let mut mask = [0u8; 4];
            if self.io.read_exact(&mut mask).await.is_err() {
                return Message::Close;
            }
            let mut payload = vec![0u8; head.len as usize];
            if self.io.read_exact(&mut payload).await.is_err() {
                return Message::Close;
            }
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
            match head.opcode {
                OP_PING => {
                    if head.len > 125 || pong.try_send(payload).is_err() {
                        return Message::Close;
                    }
                    continue;
                }
                OP_PONG => continue,
                OP_CLOSE => return Message::Close,
                OP_TEXT | OP_BINARY if kind.is_none() => kind = Some(head.opcode),
                OP_CONT if kind.is_some() => {}
                _ => return Message::Close,
            }
            if message.len() + payload.len() > MAX_MESSAGE {
                return Message::Close;
            }
            message.extend_from_slice(&payload);
            if head.fin {
                return match kind {
                    Some(OP_TEXT) => match String::from_utf8(message) {
                        Ok(s) => Message::Text(s),
                        Err(_) => Message::Close,
                    },
                    _ => Message::Binary(message),
                };
            }
        }
    }

    async fn head(&mut self) -> std::io::Result<Head> {
        let mut two = [0u8; 2];
        self.io.read_exact(&mut two).await?;
        let len = match two[1] & 0x7f {
            126 => u64::from(self.io.read_u16().await?),
            127 => self.io.read_u64().await?,
            n => u64::from(n),
        };
        Ok(Head {
            fin: two[0] & 0x80 != 0,
            opcode: two[0] & 0x0f,
            masked: two[1] & 0x80 != 0,
            len,
        })
    }
}

/// A frame's bytes as the server sends it (unmasked).
fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out
}

impl Writer {
    pub(crate) async fn text(&mut self, s: &str) -> std::io::Result<()> {
        self.io.write_all(&frame(OP_TEXT, s.as_bytes())).await
    }

    pub(crate) async fn binary(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.io.write_all(&frame(OP_BINARY, b)).await
    }

    pub(crate) async fn pong(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.io.write_all(&frame(OP_PONG, b)).await
    }

    /// Sends a close frame with `code` and `reason`, then shuts the connection.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes().get(..120).unwrap_or(reason.as_bytes()));
        let _ = self.io.write_all(&frame(OP_CLOSE, &payload)).await;
        let _ = self.io.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc_6455() {
        // RFC 6455 section 1.3's example.
        let req = Request::builder()
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap();
        let r = accept(&req).unwrap_or_else(|_| panic!("refused"));
        assert_eq!(
            r.headers()[header::SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let plain = Request::builder().body(()).unwrap();
        assert!(accept(&plain).is_err());
    }

    #[test]
    fn base64_pads() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }

    #[test]
    fn frames_carry_their_length() {
        assert_eq!(frame(OP_TEXT, b"hi"), vec![0x81, 2, b'h', b'i']);
        let f = frame(OP_BINARY, &[0u8; 300]);
        assert_eq!(&f[..4], &[0x82, 126, 1, 44]);
        let f = frame(OP_BINARY, &vec![0u8; 70_000]);
        assert_eq!(f[1], 127);
    }
}
