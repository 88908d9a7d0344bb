/work/main/fuzz/target/debug/deps/poly1305-f34cd27be0486c75.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend/avx2.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend/avx2/helpers.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend/autodetect.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend/soft.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/../README.md

/work/main/fuzz/target/debug/deps/libpoly1305-f34cd27be0486c75.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend/avx2.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend/avx2/helpers.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend/autodetect.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend/soft.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend/avx2.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend/avx2/helpers.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend/autodetect.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/backend/soft.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/poly1305-0.9.1/src/../README.md:
