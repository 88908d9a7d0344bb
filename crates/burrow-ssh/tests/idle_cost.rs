//! What an idle connection costs: the driver's future lives as long as the connection, so
//! everything it holds across an await is paid by every idle device on a relay.

use std::sync::Arc;
use std::time::Instant;

use burrow_ssh::auth::method;
use burrow_ssh::channel::Limits;
use burrow_ssh::kex::HostKey;
use burrow_ssh::session::{Session, Side};
use burrow_ssh::transport::{Config, Role};

struct Quiet;
impl burrow_ssh::driver::Handler for Quiet {}

#[tokio::test]
async fn a_connections_future_holds_no_buffers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let config = Config {
        role: Role::Server,
        host_key: Some(Arc::new(HostKey::from_seed(&[1; 32]).unwrap())),
        ..Default::default()
    };
    let session = Session::new(
        config,
        Side::Server {
            methods: vec![method::PUBLICKEY],
            max_attempts: 6,
        },
        Limits::default(),
        Instant::now(),
    );
    let (_handle, driver) = burrow_ssh::driver::start(socket, session, Quiet, None);
    // 1,176 bytes when written; a 4 KiB read buffer held across an await (the linger after a
    // DISCONNECT) once made it 4,672 on every connection.
    let size = std::mem::size_of_val(&driver);
    assert!(size <= 2048, "the driver's future is {size} bytes");
}
