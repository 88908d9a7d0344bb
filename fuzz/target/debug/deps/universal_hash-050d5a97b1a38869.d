/work/main/fuzz/target/debug/deps/universal_hash-050d5a97b1a38869.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/universal-hash-0.6.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/universal-hash-0.6.1/src/../README.md

/work/main/fuzz/target/debug/deps/libuniversal_hash-050d5a97b1a38869.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/universal-hash-0.6.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/universal-hash-0.6.1/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/universal-hash-0.6.1/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/universal-hash-0.6.1/src/../README.md:
