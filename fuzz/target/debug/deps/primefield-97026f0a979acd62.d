/work/main/fuzz/target/debug/deps/primefield-97026f0a979acd62.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/dev.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/error.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/macros.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/macros/fiat.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/monty.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/traits.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/../README.md

/work/main/fuzz/target/debug/deps/libprimefield-97026f0a979acd62.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/dev.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/error.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/macros.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/macros/fiat.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/monty.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/traits.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/dev.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/error.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/macros.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/macros/fiat.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/monty.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/traits.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/primefield-0.14.0/src/../README.md:
