/work/main/fuzz/target/debug/deps/ghash-f2ec2777fd3879de.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ghash-0.6.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ghash-0.6.0/src/../README.md

/work/main/fuzz/target/debug/deps/libghash-f2ec2777fd3879de.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ghash-0.6.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ghash-0.6.0/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ghash-0.6.0/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/ghash-0.6.0/src/../README.md:
