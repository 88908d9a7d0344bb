/work/main/fuzz/target/debug/deps/p521-a95a0ef4dddeacac.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/ecdsa.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic/field.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic/field/loose.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic/scalar.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/../README.md /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic/field/p521_64.rs

/work/main/fuzz/target/debug/deps/libp521-a95a0ef4dddeacac.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/ecdsa.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic/field.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic/field/loose.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic/scalar.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/../README.md /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic/field/p521_64.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/ecdsa.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic/field.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic/field/loose.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic/scalar.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/../README.md:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p521-0.14.0/src/arithmetic/field/p521_64.rs:
