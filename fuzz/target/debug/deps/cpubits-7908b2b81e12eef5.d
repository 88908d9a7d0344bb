/work/main/fuzz/target/debug/deps/cpubits-7908b2b81e12eef5.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cpubits-0.1.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cpubits-0.1.1/src/../README.md

/work/main/fuzz/target/debug/deps/libcpubits-7908b2b81e12eef5.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cpubits-0.1.1/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cpubits-0.1.1/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cpubits-0.1.1/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cpubits-0.1.1/src/../README.md:
