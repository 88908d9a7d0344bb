/work/main/fuzz/target/debug/deps/group-9a55e7a5909cec96.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/group-0.14.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/group-0.14.0/src/cofactor.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/group-0.14.0/src/prime.rs

/work/main/fuzz/target/debug/deps/libgroup-9a55e7a5909cec96.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/group-0.14.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/group-0.14.0/src/cofactor.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/group-0.14.0/src/prime.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/group-0.14.0/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/group-0.14.0/src/cofactor.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/group-0.14.0/src/prime.rs:
