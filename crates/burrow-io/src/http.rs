//! A small HTTP/1.1 client: one request per connection, bounded in time and size, `https`
//! through rustls. The agent reads metadata documents with it; the relay posts alerts.

use std::time::Duration;

use burrow_proto::metadata::{HttpResponse, HttpUrl, MAX_RESPONSE, parse_http_response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::Tls;

/// Makes requests.
pub struct Client {
    /// Time one request may take, from connecting to the end of the answer.
    pub timeout: Duration,
    /// TLS for `https` URLs; without it they fail with a message that says why.
    pub tls: Option<Tls>,
    /// The `User-Agent` header (`burrow-agent/0.1.0`).
    pub user_agent: String,
}

/// One request.
pub struct Request<'a> {
    /// `GET`, `POST`.
    pub method: &'a str,
    /// Where.
    pub url: &'a HttpUrl,
    /// The `Content-Type` of `body`.
    pub content_type: &'a str,
    /// What `Accept` says.
    pub accept: &'a str,
    /// The body (empty for a GET).
    pub body: &'a [u8],
}

impl Client {
    /// The body of a 2xx answer to `GET url`; anything else is an error that names the URL.
    pub async fn get(&self, url: &HttpUrl) -> Result<Vec<u8>, String> {
        let answer = self
            .send(&Request {
                method: "GET",
                url,
                content_type: "",
                accept: "application/json, text/plain",
                body: &[],
            })
            .await?;
        if !(200..300).contains(&answer.status) {
            return Err(format!("{url}: HTTP {} {}", answer.status, answer.reason));
        }
        Ok(answer.body)
    }

    /// Sends `request` and returns the answer, whatever its status; failing to get one is an
    /// error that names the URL.
    pub async fn send(&self, request: &Request<'_>) -> Result<HttpResponse, String> {
        let url = request.url;
        match tokio::time::timeout(self.timeout, self.send_unbounded(request)).await {
            Ok(result) => result.map_err(|e| format!("{url}: {e}")),
            Err(_) => Err(format!(
                "{url}: no complete answer within {:.0} s",
                self.timeout.as_secs_f64()
            )),
        }
    }

    async fn send_unbounded(&self, request: &Request<'_>) -> Result<HttpResponse, String> {
        let url = request.url;
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if !url.tls {
            return exchange(tcp, request, &self.user_agent).await;
        }
        let tls = self.tls.as_ref().ok_or(
            "https is not available: the TLS roots could not be loaded (see the start-up log)",
        )?;
        let stream = tls.connect(&url.host, tcp).await?;
        exchange(stream, request, &self.user_agent).await
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &Request<'_>,
    user_agent: &str,
) -> Result<HttpResponse, String> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {user_agent}\r\nAccept: {}\r\nConnection: close\r\n",
        request.method,
        request.url.path,
        request.url.host_header(),
        request.accept,
    );
    if !request.body.is_empty() || request.method != "GET" {
        head.push_str(&format!(
            "Content-Type: {}\r\nContent-Length: {}\r\n",
            request.content_type,
            request.body.len()
        ));
    }
    head.push_str("\r\n");
    let mut whole = head.into_bytes();
    whole.extend_from_slice(request.body);
    stream
        .write_all(&whole)
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("cannot send the request: {e}"))?;
    // Headers come on top of the body; allow them a little room.
    let limit = MAX_RESPONSE + 64 * 1024;
    let mut raw = Vec::new();
    let mut limited = (&mut stream).take(limit as u64 + 1);
    if let Err(e) = limited.read_to_end(&mut raw).await {
        // A TLS server that closes without close_notify still sent a whole answer.
        if raw.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(format!("cannot read the answer: {e}"));
        }
    }
    if raw.len() > limit {
        return Err(format!(
            "the answer is larger than {} KiB",
            MAX_RESPONSE / 1024
        ));
    }
    parse_http_response(&raw)
}
