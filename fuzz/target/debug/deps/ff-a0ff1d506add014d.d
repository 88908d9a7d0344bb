/work/main/fuzz/target/debug/deps/ff-a0ff1d506add014d.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ff-0.14.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ff-0.14.0/src/batch.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ff-0.14.0/src/helpers.rs

/work/main/fuzz/target/debug/deps/libff-a0ff1d506add014d.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ff-0.14.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ff-0.14.0/src/batch.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ff-0.14.0/src/helpers.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ff-0.14.0/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ff-0.14.0/src/batch.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ff-0.14.0/src/helpers.rs:
