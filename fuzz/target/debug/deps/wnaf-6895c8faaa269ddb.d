/work/main/fuzz/target/debug/deps/wnaf-6895c8faaa269ddb.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/base.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/limb_buffer.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/scalar.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/traits.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/../README.md

/work/main/fuzz/target/debug/deps/libwnaf-6895c8faaa269ddb.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/base.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/limb_buffer.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/scalar.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/traits.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/base.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/limb_buffer.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/scalar.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/traits.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/wnaf-0.14.1/src/../README.md:
