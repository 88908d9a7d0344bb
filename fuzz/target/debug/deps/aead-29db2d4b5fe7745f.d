/work/main/fuzz/target/debug/deps/aead-29db2d4b5fe7745f.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aead-0.6.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aead-0.6.1/src/../README.md

/work/main/fuzz/target/debug/deps/libaead-29db2d4b5fe7745f.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aead-0.6.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aead-0.6.1/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aead-0.6.1/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aead-0.6.1/src/../README.md:
