/work/main/fuzz/target/debug/deps/burrow_ssh-8459a152dca6ea0c.d: /work/main/crates/burrow-ssh/src/lib.rs /work/main/crates/burrow-ssh/src/auth.rs /work/main/crates/burrow-ssh/src/channel.rs /work/main/crates/burrow-ssh/src/crypto.rs /work/main/crates/burrow-ssh/src/kex.rs /work/main/crates/burrow-ssh/src/kexinit.rs /work/main/crates/burrow-ssh/src/messages.rs /work/main/crates/burrow-ssh/src/msg.rs /work/main/crates/burrow-ssh/src/packet.rs /work/main/crates/burrow-ssh/src/session.rs /work/main/crates/burrow-ssh/src/transport.rs /work/main/crates/burrow-ssh/src/version.rs /work/main/crates/burrow-ssh/src/wire.rs

/work/main/fuzz/target/debug/deps/libburrow_ssh-8459a152dca6ea0c.rmeta: /work/main/crates/burrow-ssh/src/lib.rs /work/main/crates/burrow-ssh/src/auth.rs /work/main/crates/burrow-ssh/src/channel.rs /work/main/crates/burrow-ssh/src/crypto.rs /work/main/crates/burrow-ssh/src/kex.rs /work/main/crates/burrow-ssh/src/kexinit.rs /work/main/crates/burrow-ssh/src/messages.rs /work/main/crates/burrow-ssh/src/msg.rs /work/main/crates/burrow-ssh/src/packet.rs /work/main/crates/burrow-ssh/src/session.rs /work/main/crates/burrow-ssh/src/transport.rs /work/main/crates/burrow-ssh/src/version.rs /work/main/crates/burrow-ssh/src/wire.rs

/work/main/crates/burrow-ssh/src/lib.rs:
/work/main/crates/burrow-ssh/src/auth.rs:
/work/main/crates/burrow-ssh/src/channel.rs:
/work/main/crates/burrow-ssh/src/crypto.rs:
/work/main/crates/burrow-ssh/src/kex.rs:
/work/main/crates/burrow-ssh/src/kexinit.rs:
/work/main/crates/burrow-ssh/src/messages.rs:
/work/main/crates/burrow-ssh/src/msg.rs:
/work/main/crates/burrow-ssh/src/packet.rs:
/work/main/crates/burrow-ssh/src/session.rs:
/work/main/crates/burrow-ssh/src/transport.rs:
/work/main/crates/burrow-ssh/src/version.rs:
/work/main/crates/burrow-ssh/src/wire.rs:
