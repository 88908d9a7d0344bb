/work/main/fuzz/target/debug/deps/p256-3e58e1bb62ebf4d1.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/ecdsa.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic/field.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic/scalar.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/../README.md /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic/field/field64.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic/scalar/scalar64.rs

/work/main/fuzz/target/debug/deps/libp256-3e58e1bb62ebf4d1.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/ecdsa.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic/field.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic/scalar.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/../README.md /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic/field/field64.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic/scalar/scalar64.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/ecdsa.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic/field.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic/scalar.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/../README.md:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic/field/field64.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/p256-0.14.0/src/arithmetic/scalar/scalar64.rs:
