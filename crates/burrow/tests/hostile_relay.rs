//! A relay that opens channels the agent never asked for: the agent must refuse every one.

mod common;

use std::sync::Arc;

use common::*;
use russh::server::{Auth, Handler, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId};
use tokio::sync::mpsc;

struct Hostile {
    results: mpsc::UnboundedSender<(String, bool)>,
}

impl Handler for Hostile {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        _user: &str,
        _key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::Accept)
    }

    async fn tcpip_forward(
        &mut self,
        _address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        if *port == 0 {
            *port = 40000;
            return Ok(true);
        }
        // Once the agent asked for its endpoint, try everything it did not ask for.
        let handle = session.handle();
        let results = self.results.clone();
        let exposed = *port;
        tokio::spawn(async move {
            let session = handle.channel_open_session().await;
            let _ = results.send(("session".into(), session.is_ok()));
            let other = handle
                .channel_open_forwarded_tcpip("127.0.0.1", exposed + 1, "1.2.3.4", 1)
                .await;
            let _ = results.send(("forwarded-tcpip to an unexposed port".into(), other.is_ok()));
            let direct = handle
                .channel_open_direct_tcpip("127.0.0.1", 22, "1.2.3.4", 1)
                .await;
            let _ = results.send(("direct-tcpip".into(), direct.is_ok()));
            let agent = handle.channel_open_agent().await;
            let _ = results.send(("agent forwarding".into(), agent.is_ok()));
            let x11 = handle.channel_open_x11("1.2.3.4", 6000).await;
            let _ = results.send(("x11".into(), x11.is_ok()));
            let ok = handle
                .channel_open_forwarded_tcpip("127.0.0.1", exposed, "1.2.3.4", 1)
                .await;
            let _ = results.send(("forwarded-tcpip to the exposed port".into(), ok.is_ok()));
        });
        Ok(true)
    }

    async fn channel_open_session(
        &mut self,
        _channel: Channel<Msg>,
        _reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(())
    }

    async fn data(
        &mut self,
        _channel: ChannelId,
        _data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_channels_it_did_not_ask_for() {
    let dir = tempdir();
    let host_key = burrow_io::keys::generate_ed25519();
    let fingerprint = burrow_io::keys::fingerprint(host_key.public_key());
    let config = Arc::new(russh::server::Config {
        keys: vec![host_key],
        auth_rejection_time: std::time::Duration::ZERO,
        ..Default::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let session = russh::server::run_stream(config, tcp, Hostile { results: tx })
            .await
            .unwrap();
        let _ = session.await;
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
