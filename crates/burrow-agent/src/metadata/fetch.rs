//! A small HTTP/1.1 GET for metadata documents: one request per connection, bounded in time
//! and size, `https` through rustls.

use std::time::Duration;

use burrow_proto::metadata::{HttpUrl, MAX_RESPONSE, parse_http_response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tls::Tls;

/// Reads metadata documents.
pub(crate) struct Fetcher {
    pub(crate) timeout: Duration,
    pub(crate) tls: Option<Tls>,
}

impl Fetcher {
    /// The body of a 2xx answer to `GET url`; anything else is an error that names the URL.
    pub(crate) async fn get(&self, url: &HttpUrl) -> Result<Vec<u8>, String> {
        match tokio::time::timeout(self.timeout, self.get_unbounded(url)).await {
            Ok(result) => result.map_err(|e| format!("{url}: {e}")),
            Err(_) => Err(format!(
                "{url}: no complete answer within {:.0} s",
                self.timeout.as_secs_f64()
            )),
        }
    }

    async fn get_unbounded(&self, url: &HttpUrl) -> Result<Vec<u8>, String> {
        let tcp = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if !url.tls {
            return exchange(tcp, url).await;
        }
        let tls = self.tls.as_ref().ok_or(
            "https is not available: the TLS roots could not be loaded (see the agent's start-up log)",
        )?;
        let stream = tls.connect(&url.host, tcp).await?;
        exchange(stream, url).await
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    url: &HttpUrl,
) -> Result<Vec<u8>, String> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: burrow-agent/{}\r\nAccept: application/json, text/plain\r\nConnection: close\r\n\r\n",
        url.path,
        url.host_header(),
        env!("CARGO_PKG_VERSION"),
    );
    stream
        .write_all(request.as_bytes())
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
    let response = parse_http_response(&raw)?;
    if !(200..300).contains(&response.status) {
        return Err(format!("HTTP {} {}", response.status, response.reason));
    }
    Ok(response.body)
}
