/work/main/fuzz/target/debug/deps/p384-025574c36dcabf42.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/ecdsa.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/arithmetic.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/arithmetic/field.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/arithmetic/scalar.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/../README.md

/work/main/fuzz/target/debug/deps/libp384-025574c36dcabf42.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/ecdsa.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/arithmetic.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/arithmetic/field.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/arithmetic/scalar.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/ecdsa.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/arithmetic.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/arithmetic/field.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/arithmetic/scalar.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p384-0.14.0/src/../README.md:
