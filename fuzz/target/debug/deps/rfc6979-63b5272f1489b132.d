/work/main/fuzz/target/debug/deps/rfc6979-63b5272f1489b132.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rfc6979-0.6.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rfc6979-0.6.0/src/hmac_drbg.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rfc6979-0.6.0/src/../README.md

/work/main/fuzz/target/debug/deps/librfc6979-63b5272f1489b132.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rfc6979-0.6.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rfc6979-0.6.0/src/hmac_drbg.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rfc6979-0.6.0/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rfc6979-0.6.0/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rfc6979-0.6.0/src/hmac_drbg.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/rfc6979-0.6.0/src/../README.md:
