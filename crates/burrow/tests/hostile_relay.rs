//! A relay that opens channels the agent never asked for: the agent must refuse every one.

mod common;

use std::sync::Arc;

use burrow_ssh::auth::{Decision, Question, method};
use burrow_ssh::channel::{GlobalRequest, Limits, OpenKind};
use burrow_ssh::driver::{GlobalAnswer, Handle, Handler};
use burrow_ssh::session::{Session, Side};
use common::*;
use tokio::sync::mpsc;

struct Hostile {
    results: mpsc::UnboundedSender<(String, bool)>,
    handle: Option<Handle>,
}

impl Handler for Hostile {
    async fn auth(&mut self, _question: Question) -> Decision {
        Decision::Accept
    }

    async fn authenticated(&mut self, _user: &str, handle: &Handle) {
        self.handle = Some(handle.clone());
    }

    async fn global_request(&mut self, request: GlobalRequest) -> GlobalAnswer {
        let GlobalRequest::TcpipForward { port, .. } = request else {
            return GlobalAnswer::Failure;
        };
        if port == 0 {
            return GlobalAnswer::Success(Some(40000));
        }
        // Once the agent asked for its endpoint, try everything it did not ask for.
        let Some(handle) = self.handle.clone() else {
            return GlobalAnswer::Failure;
        };
        let results = self.results.clone();
        let exposed = port;
        let forwarded = move |port| OpenKind::ForwardedTcpip {
            address: "127.0.0.1".into(),
            port,
            originator: "1.2.3.4".into(),
            originator_port: 1,
        };
        tokio::spawn(async move {
            let tries = [
                ("session", OpenKind::Session),
                (
                    "forwarded-tcpip to an unexposed port",
                    forwarded(exposed + 1),
                ),
                (
                    "direct-tcpip",
                    OpenKind::DirectTcpip {
                        host: "127.0.0.1".into(),
                        port: 22,
                        originator: "1.2.3.4".into(),
                        originator_port: 1,
                    },
                ),
                (
                    "agent forwarding",
                    OpenKind::Other("auth-agent@openssh.com".into()),
                ),
                ("x11", OpenKind::Other("x11".into())),
                ("forwarded-tcpip to the exposed port", forwarded(exposed)),
            ];
            for (what, kind) in tries {
                let opened = handle.open(kind).await;
                let _ = results.send((what.into(), opened.is_ok()));
            }
        });
        GlobalAnswer::Success(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_channels_it_did_not_ask_for() {
    let dir = tempdir();
    let host_key = burrow_io::keys::generate_ed25519();
    let fingerprint = burrow_io::keys::fingerprint(host_key.public_key());
    let seed = host_key.key_data().ed25519().unwrap().private.to_bytes();
    let host = Arc::new(burrow_ssh::kex::HostKey::from_seed(&seed).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let config = burrow_ssh::transport::Config {
            role: burrow_ssh::transport::Role::Server,
            software: "hostile".into(),
            comment: None,
            kex: burrow_ssh::kex::methods(),
            ciphers: burrow_ssh::crypto::CIPHERS
                .iter()
                .map(|c| c.to_string())
                .collect(),
            host_key: Some(host),
            host_key_check: None,
            rekey_bytes: 1 << 30,
            rekey_time: std::time::Duration::from_secs(3600),
            ext_info: None,
            ..Default::default()
        };
        let session = Session::new(
            config,
            Side::Server {
                methods: vec![method::PUBLICKEY],
                max_attempts: 6,
            },
            Limits::default(),
            std::time::Instant::now(),
        );
        let hostile = Hostile {
            results: tx,
            handle: None,
        };
        let (_handle, run) = burrow_ssh::driver::start(tcp, session, hostile, None);
        let _ = run.await;
    });

    let dev_key = keypair(dir.path(), "dev");
    let service = echo_server().await;
    let mut config = agent_config(&addr.to_string(), "pi", &dev_key, &fingerprint);
    expose(&mut config, 22, service);
    let agent = TestAgent::start(dir.path(), config);

    let mut seen = Vec::new();
    for _ in 0..6 {
        let (what, opened) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        seen.push((what, opened));
    }
    for (what, opened) in &seen {
        let expected = what == "forwarded-tcpip to the exposed port";
        assert_eq!(*opened, expected, "{what}: {seen:?}");
    }
    agent.stop().await;
}
