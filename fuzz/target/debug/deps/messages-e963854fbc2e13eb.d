/work/main/fuzz/target/debug/deps/messages-e963854fbc2e13eb.d: fuzz_targets/messages.rs

/work/main/fuzz/target/debug/deps/libmessages-e963854fbc2e13eb.rmeta: fuzz_targets/messages.rs

fuzz_targets/messages.rs:
