/work/main/fuzz/target/debug/deps/server_session-c414a64339d0d2c7.d: fuzz_targets/server_session.rs

/work/main/fuzz/target/debug/deps/libserver_session-c414a64339d0d2c7.rmeta: fuzz_targets/server_session.rs

fuzz_targets/server_session.rs:
