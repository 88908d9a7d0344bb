/work/main/fuzz/target/debug/deps/aes_gcm-50c0845281ee3191.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aes-gcm-0.11.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aes-gcm-0.11.1/src/../README.md

/work/main/fuzz/target/debug/deps/libaes_gcm-50c0845281ee3191.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aes-gcm-0.11.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aes-gcm-0.11.1/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aes-gcm-0.11.1/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/aes-gcm-0.11.1/src/../README.md:
