/work/main/fuzz/target/debug/deps/ctr-fa89f17060652418.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/ctr_core.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/flavors.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/flavors/ctr128.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/flavors/ctr32.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/flavors/ctr64.rs

/work/main/fuzz/target/debug/deps/libctr-fa89f17060652418.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/ctr_core.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/flavors.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/flavors/ctr128.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/flavors/ctr32.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/flavors/ctr64.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/ctr_core.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/flavors.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/flavors/ctr128.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/flavors/ctr32.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ctr-0.10.1/src/flavors/ctr64.rs:
