/work/main/fuzz/target/debug/deps/packet-4f06fd617c623e10.d: fuzz_targets/packet.rs

/work/main/fuzz/target/debug/deps/libpacket-4f06fd617c623e10.rmeta: fuzz_targets/packet.rs

fuzz_targets/packet.rs:
