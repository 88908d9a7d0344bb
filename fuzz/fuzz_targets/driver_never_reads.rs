//! The tokio driver against a peer that never reads: after a real key exchange and login, the
//! fuzzer's messages (sealed under the real keys) are sent, repeated, and nothing the server
//! answers is ever read. Whatever they are, what the server queues for the peer must stay
//! within its cap plus what one read's worth of input can make it answer: a peer that never
//! reads costs a constant.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use burrow_ssh::auth::{Credential, Decision, Question, method};
use burrow_ssh::channel::{GlobalRequest, Limits, OpenKind};
use burrow_ssh::driver::{GlobalAnswer, Handle, Handler, Offer};
use burrow_ssh::kex::HostKey;
use burrow_ssh::raw_peer::{RawPeer, client};
use burrow_ssh::session::{Session, Side};
use burrow_ssh::transport::{Config, Role};
use libfuzzer_sys::fuzz_target;
use tokio::net::TcpSocket;

/// The server's cap after login: small, so that the fuzzer reaches it.
const CAP: usize = 8 * 1024;
/// What one read (64 KiB of the smallest packets) can make the server answer before it looks
/// at the cap again, with room to spare.
const ONE_READ_OF_ANSWERS: usize = 512 * 1024;

struct Yes;

impl Handler for Yes {
    async fn auth(&mut self, _question: Question) -> Decision {
        Decision::Accept
    }

    async fn channel_open(&mut self, _kind: OpenKind, offer: Offer) {
        // Accepted and kept: a channel nobody reads from, like a slow endpoint.
        if let Ok(channel) = offer.accept() {
            std::mem::forget(channel);
        }
    }

    async fn global_request(&mut self, _request: GlobalRequest) -> GlobalAnswer {
        GlobalAnswer::Success(Some(1))
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

async fn one(data: &[u8]) {
    let host = std::sync::Arc::new(HostKey::from_seed(&[3; 32]).expect("seed"));
    // Small socket buffers both ways (accepted sockets inherit the listener's): what the
    // server answers stays in the server instead of in the kernel.
    let socket = TcpSocket::new_v4().expect("socket");
    let _ = socket.set_send_buffer_size(4096);
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(8).expect("listen");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    // curve25519 keeps each run short; what is fuzzed here comes after the key exchange.
    let server_config = Config {
        role: Role::Server,
        host_key: Some(host),
        kex: vec![burrow_ssh::kex::CURVE25519_SHA256.into()],
        ..Config::default()
    };
    let limits = Limits {
        window: 16 * 1024,
        max_queued: CAP,
        stall_timeout: Duration::from_secs(3600),
        ..Limits::default()
    };
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let session = Session::new(
            server_config,
            Side::Server {
                methods: vec![method::PASSWORD],
                max_attempts: 6,
            },
            limits,
            Instant::now(),
        );
        let (handle, driver) = burrow_ssh::driver::start(tcp, session, Yes, None);
        (handle, tokio::spawn(driver))
    });
    let session = client(
        "fuzz",
        vec![Credential::Password(String::from("pw").into())],
        1 << 20,
    );
    let client_socket = TcpSocket::new_v4().expect("socket");
    let _ = client_socket.set_recv_buffer_size(4096);
    let Ok(stream) = client_socket.connect(addr).await else {
        return;
    };
    let Ok(mut peer) = RawPeer::from_stream(stream, session) else {
        return;
    };
    let Ok((handle, driver)) = accept.await else {
        return;
    };
    if peer
        .run_until(Duration::from_secs(5), |s, _| s.authenticated())
        .await
        .is_err()
    {
        driver.abort();
        return;
    }
    // The first byte says how often the sequence repeats; then length-prefixed messages.
    let Some((&repeat, mut rest)) = data.split_first() else {
        driver.abort();
        return;
    };
    let mut messages = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (payload, tail) = tail.split_at(n);
        if !payload.is_empty() {
            messages.push(payload.to_vec());
        }
        rest = tail;
    }
    'send: for _ in 0..=usize::from(repeat % 64) {
        for m in &messages {
            if peer.queue(m.clone()).is_err() {
                break 'send;
            }
        }
        if peer.write_some().is_err() {
            break;
        }
        tokio::task::yield_now().await;
    }
    for _ in 0..20 {
        tokio::task::yield_now().await;
        let _ = peer.write_some();
    }
    check(&handle);
    driver.abort();
}

fn check(handle: &Handle) {
    let queued = handle.queued_bytes();
    assert!(
        queued <= CAP + ONE_READ_OF_ANSWERS,
        "{queued} bytes queued for a peer that never reads (cap {CAP})"
    );
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(one(data));
});
