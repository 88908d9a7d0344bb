/work/main/fuzz/target/debug/deps/pem_rfc7468-a26ec186f928e19a.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/decoder.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/encoder.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/error.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/grammar.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/../README.md

/work/main/fuzz/target/debug/deps/libpem_rfc7468-a26ec186f928e19a.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/decoder.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/encoder.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/error.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/grammar.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/decoder.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/encoder.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/error.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/grammar.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pem-rfc7468-1.0.0/src/../README.md:
