/work/main/fuzz/target/debug/deps/bcrypt_pbkdf-77bcf11357533208.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bcrypt-pbkdf-0.11.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bcrypt-pbkdf-0.11.0/src/errors.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bcrypt-pbkdf-0.11.0/src/../README.md

/work/main/fuzz/target/debug/deps/libbcrypt_pbkdf-77bcf11357533208.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bcrypt-pbkdf-0.11.0/src/lib.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bcrypt-pbkdf-0.11.0/src/errors.rs /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bcrypt-pbkdf-0.11.0/src/../README.md

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bcrypt-pbkdf-0.11.0/src/lib.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bcrypt-pbkdf-0.11.0/src/errors.rs:
/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/bcrypt-pbkdf-0.11.0/src/../README.md:
