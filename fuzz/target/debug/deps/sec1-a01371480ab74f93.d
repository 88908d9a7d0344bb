/work/main/fuzz/target/debug/deps/sec1-a01371480ab74f93.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/point.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/error.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/parameters.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/private_key.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/traits.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/../README.md

/work/main/fuzz/target/debug/deps/libsec1-a01371480ab74f93.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/point.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/error.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/parameters.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/private_key.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/traits.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/point.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/error.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/parameters.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/private_key.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/traits.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/sec1-0.8.1/src/../README.md:
