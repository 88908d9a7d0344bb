/work/main/fuzz/target/debug/deps/pbkdf2-e0f5f352150b6427.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pbkdf2-0.13.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pbkdf2-0.13.0/src/../README.md

/work/main/fuzz/target/debug/deps/libpbkdf2-e0f5f352150b6427.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pbkdf2-0.13.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pbkdf2-0.13.0/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pbkdf2-0.13.0/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/pbkdf2-0.13.0/src/../README.md:
