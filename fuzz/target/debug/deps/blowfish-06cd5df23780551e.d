/work/main/fuzz/target/debug/deps/blowfish-06cd5df23780551e.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/blowfish-0.10.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/blowfish-0.10.0/src/consts.rs

/work/main/fuzz/target/debug/deps/libblowfish-06cd5df23780551e.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/blowfish-0.10.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/blowfish-0.10.0/src/consts.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/blowfish-0.10.0/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/blowfish-0.10.0/src/consts.rs:
