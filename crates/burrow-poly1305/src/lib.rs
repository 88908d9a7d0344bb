//! Poly1305 (RFC 8439 §2.5) of one whole message, on AVX-512 IFMA where the CPU has it.
//!
//! The operator path's cipher is chacha20-poly1305, which the operator's OpenSSH client
//! chooses; RustCrypto's Poly1305 (AVX2) was a fifth of the relay's CPU on an upload through
//! it (bench/tuning.md, step 20). Intel since Ice Lake and AMD since Zen 4 multiply 52-bit
//! numbers into 104-bit products in eight lanes at once (`vpmadd52luq`/`vpmadd52huq`), which
//! fits Poly1305 in radix 2^44: three limbs per number, nine products per multiplication.
//!
//! How: the accumulator is kept in eight lanes, lane `l` taking blocks `l`, `l + 8`, ... and
//! multiplying by r^8 after each; the last group multiplies lane `l` by r^(8-l) instead, so
//! that the lanes' sum is the polynomial over every block taken so far. The blocks after the
//! last whole group of eight, and messages too short to be worth the powers of r, go through
//! the same arithmetic one block at a time on 64-bit integers. Every value stays below 2^52
//! where the vector code multiplies it, and the sum is reduced modulo 2^130 - 5 only at the
//! end (in constant time: no branch or index depends on the key or the message).
//!
//! A crate of its own so that burrow-ssh, which parses what hostile peers send, keeps
//! `forbid(unsafe_code)`. Here `unsafe` is denied too, and allowed on two statements: the
//! call into the vector code once the CPU was asked whether it has the instructions, and the
//! loads of 64 bytes from a slice of 128.
//!
//! The tests check it against RustCrypto's Poly1305 for every length up to 1100 bytes and
//! larger ones, with keys and messages that push every limb to its largest value, and fail on
//! a CPU that lists AVX-512 IFMA if the vector code does not run there.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

/// Low 44 bits.
const M44: u64 = (1 << 44) - 1;
/// Low 42 bits.
const M42: u64 = (1 << 42) - 1;
/// Shorter messages go one block at a time: the eight powers of r cost about what the
/// vector code saves on this many bytes.
const VECTOR_FROM: usize = 512;

/// A number modulo 2^130 - 5 in three limbs of 44, 44 and 42 bits (each may run a little
/// over between reductions).
#[derive(Clone, Copy, Default)]
struct Limbs([u64; 3]);

impl Limbs {
    /// A 16-byte little-endian block, with `top` (2^128 for a whole block) added.
    fn from_block(lo: u64, hi: u64, top: u64) -> Limbs {
        Limbs([lo & M44, ((lo >> 44) | (hi << 20)) & M44, (hi >> 24) | top])
    }

    fn add(self, other: Limbs) -> Limbs {
        let [a0, a1, a2] = self.0;
        let [b0, b1, b2] = other.0;
        Limbs([
            a0.wrapping_add(b0),
            a1.wrapping_add(b1),
            a2.wrapping_add(b2),
        ])
    }

    /// `self * r` modulo 2^130 - 5, carried so that the limbs are below 2^44, 2^44 + 2^21
    /// and 2^42. `self`'s limbs must be below 2^58, `r`'s below 2^45.
    fn mul(self, r: Limbs) -> Limbs {
        let [h0, h1, h2] = self.0.map(u128::from);
        let [r0, r1, r2] = r.0.map(u128::from);
        // 2^132 = 2^130 * 4 ≡ 5 * 4: what passes the top limb comes back times 20.
        let (s1, s2) = (r1.wrapping_mul(20), r2.wrapping_mul(20));
        let m = |a: u128, b: u128| a.wrapping_mul(b);
        let d0 = m(h0, r0).wrapping_add(m(h1, s2)).wrapping_add(m(h2, s1));
        let d1 = m(h0, r1).wrapping_add(m(h1, r0)).wrapping_add(m(h2, s2));
        let d2 = m(h0, r2).wrapping_add(m(h1, r1)).wrapping_add(m(h2, r0));
        let d1 = d1.wrapping_add(d0 >> 44);
        let d2 = d2.wrapping_add(d1 >> 44);
        // 2^130 ≡ 5.
        let l0 = (d0 & u128::from(M44)).wrapping_add((d2 >> 42).wrapping_mul(5));
        let l1 = (d1 & u128::from(M44)).wrapping_add(l0 >> 44);
        Limbs([
            (l0 & u128::from(M44)) as u64,
            l1 as u64,
            (d2 & u128::from(M42)) as u64,
        ])
    }

    /// The number fully reduced modulo 2^130 - 5, as its low 128 bits.
    fn reduce(self) -> u128 {
        let [mut h0, mut h1, mut h2] = self.0;
        // Carried twice over: below 2^130 + 2^44, so at most one p to take away.
        for _ in 0..2 {
            h1 = h1.wrapping_add(h0 >> 44);
            h0 &= M44;
            h2 = h2.wrapping_add(h1 >> 44);
            h1 &= M44;
            h0 = h0.wrapping_add((h2 >> 42).wrapping_mul(5));
            h2 &= M42;
        }
        h1 = h1.wrapping_add(h0 >> 44);
        h0 &= M44;
        h2 = h2.wrapping_add(h1 >> 44);
        h1 &= M44;
        // h - p = h + 5 - 2^130: taken when h + 5 reaches 2^130, chosen by a mask.
        let g0 = h0.wrapping_add(5);
        let g1 = h1.wrapping_add(g0 >> 44);
        let g2 = h2.wrapping_add(g1 >> 44);
        // Through `black_box`: the optimiser cannot see that the mask is all ones or none,
        // and so cannot make a branch of it.
        let take = std::hint::black_box(0u64.wrapping_sub(g2 >> 42));
        let pick = |g: u64, h: u64| (g & take) | (h & !take);
        let h0 = pick(g0 & M44, h0);
        let h1 = pick(g1 & M44, h1);
        let h2 = pick(g2 & M42, h2);
        u128::from(h0) | (u128::from(h1) << 44) | (u128::from(h2) << 88)
    }
}

/// Whether this CPU runs the eight-lane code (what makes this faster than RustCrypto's).
pub fn accelerated() -> bool {
    vector::available()
}

/// The tag of `data` under the one-time `key` (r, then s).
pub fn tag(key: &[u8; 32], data: &[u8]) -> [u8; 16] {
    let (r_bytes, s_bytes) = key.split_at(16);
    let block = |b: &[u8]| <[u8; 16]>::try_from(b).unwrap_or_default();
    let (lo, hi) = halves(&block(r_bytes));
    let r = Limbs::from_block(lo & 0x0fff_fffc_0fff_ffff, hi & 0x0fff_fffc_0fff_fffc, 0);
    let s = u128::from_le_bytes(block(s_bytes));
    let (mut h, rest) = vector::blocks(r, data).unwrap_or((Limbs::default(), data));
    let (whole, end) = rest.as_chunks::<16>();
    for block in whole {
        let (lo, hi) = halves(block);
        h = h.add(Limbs::from_block(lo, hi, 1 << 40)).mul(r);
    }
    if !end.is_empty() {
        let mut last = [0u8; 16];
        if let Some(to) = last.get_mut(..end.len()) {
            to.copy_from_slice(end);
        }
        if let Some(one) = last.get_mut(end.len()) {
            *one = 1;
        }
        let (lo, hi) = halves(&last);
        h = h.add(Limbs::from_block(lo, hi, 0)).mul(r);
    }
    h.reduce().wrapping_add(s).to_le_bytes()
}

/// A block's two little-endian 64-bit halves.
fn halves(block: &[u8; 16]) -> (u64, u64) {
    let v = u128::from_le_bytes(*block);
    (v as u64, (v >> 64) as u64)
}

#[cfg(target_arch = "x86_64")]
mod vector {
    //! The eight-lane code.

    use super::{Limbs, M42, M44, VECTOR_FROM};
    use std::arch::x86_64::*;

    /// The polynomial over `data`'s whole groups of eight blocks (r^n for block n from the
    /// end of them), and what follows them; `None` where the CPU lacks AVX-512 IFMA or the
    /// message is short.
    pub(super) fn blocks(r: Limbs, data: &[u8]) -> Option<(Limbs, &[u8])> {
        if data.len() < VECTOR_FROM || !available() {
            return None;
        }
        // SAFETY: the CPU has both features `run` enables, checked just above.
        #[allow(unsafe_code)]
        let done = unsafe { run(r, data) };
        Some(done)
    }

    /// Whether the CPU has AVX-512 IFMA (the answer is cached by the standard library).
    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512ifma")
    }

    /// Eight limbs-of-one-kind, one per lane (lane 0 first).
    #[target_feature(enable = "avx512f")]
    fn lanes(values: [u64; 8]) -> __m512i {
        let [a, b, c, d, e, f, g, h] = values.map(|v| v as i64);
        _mm512_set_epi64(h, g, f, e, d, c, b, a)
    }

    /// A multiplier in lanes: its limbs and 20 times its upper two (what wraps past 2^130).
    struct Multiplier {
        r0: __m512i,
        r1: __m512i,
        r2: __m512i,
        s1: __m512i,
        s2: __m512i,
    }

    impl Multiplier {
        #[target_feature(enable = "avx512f")]
        fn new(powers: [Limbs; 8]) -> Multiplier {
            let limb = |i: usize, times: u64| {
                lanes(powers.map(|p| p.0.get(i).copied().unwrap_or(0).wrapping_mul(times)))
            };
            Multiplier {
                r0: limb(0, 1),
                r1: limb(1, 1),
                r2: limb(2, 1),
                s1: limb(1, 20),
                s2: limb(2, 20),
            }
        }
    }

    /// `h * m` in every lane, carried as [`Limbs::mul`] carries. Inputs below 2^52 (the
    /// multipliers take only that many bits): `h`'s limbs are below 2^46 and `m`'s below
    /// 2^49 here, so every product's low half is below 2^52 and its high half below 2^43.
    #[target_feature(enable = "avx512f,avx512ifma")]
    fn mul(h: [__m512i; 3], m: &Multiplier) -> [__m512i; 3] {
        let [h0, h1, h2] = h;
        let z = _mm512_setzero_si512();
        let lo = |a: __m512i, b: __m512i, c: __m512i| _mm512_madd52lo_epu64(a, b, c);
        let hi = |a: __m512i, b: __m512i, c: __m512i| _mm512_madd52hi_epu64(a, b, c);
        let d0l = lo(lo(lo(z, h0, m.r0), h1, m.s2), h2, m.s1);
        let d0h = hi(hi(hi(z, h0, m.r0), h1, m.s2), h2, m.s1);
        let d1l = lo(lo(lo(z, h0, m.r1), h1, m.r0), h2, m.s2);
        let d1h = hi(hi(hi(z, h0, m.r1), h1, m.r0), h2, m.s2);
        let d2l = lo(lo(lo(z, h0, m.r2), h1, m.r1), h2, m.r0);
        let d2h = hi(hi(hi(z, h0, m.r2), h1, m.r1), h2, m.r0);
        let m44 = _mm512_set1_epi64(M44 as i64);
        let m42 = _mm512_set1_epi64(M42 as i64);
        // A high half is worth 2^52 in its limb: 2^8 in the next one up.
        let l1 = _mm512_add_epi64(
            _mm512_add_epi64(d1l, _mm512_slli_epi64::<8>(d0h)),
            _mm512_srli_epi64::<44>(d0l),
        );
        let l0 = _mm512_and_si512(d0l, m44);
        let l2 = _mm512_add_epi64(
            _mm512_add_epi64(d2l, _mm512_slli_epi64::<8>(d1h)),
            _mm512_srli_epi64::<44>(l1),
        );
        let l1 = _mm512_and_si512(l1, m44);
        // Past 2^130, times 5: the top limb's excess, and the top high half (2^140 = 2^10
        // times 2^130).
        let top = _mm512_add_epi64(_mm512_srli_epi64::<42>(l2), _mm512_slli_epi64::<10>(d2h));
        let l2 = _mm512_and_si512(l2, m42);
        let l0 = _mm512_add_epi64(l0, _mm512_add_epi64(top, _mm512_slli_epi64::<2>(top)));
        let l1 = _mm512_add_epi64(l1, _mm512_srli_epi64::<44>(l0));
        let l0 = _mm512_and_si512(l0, m44);
        [l0, l1, l2]
    }

    /// Eight blocks (128 bytes) as limbs, lane `l` taking block `l`, 2^128 added to each.
    #[target_feature(enable = "avx512f")]
    fn load(group: &[u8; 128]) -> [__m512i; 3] {
        let (first, second) = group.split_at(64);
        // SAFETY: each half is 64 bytes, what an unaligned 512-bit load reads.
        #[allow(unsafe_code)]
        let (a, b) = unsafe {
            (
                _mm512_loadu_si512(first.as_ptr().cast()),
                _mm512_loadu_si512(second.as_ptr().cast()),
            )
        };
        // Each block is two 64-bit words: the low ones of all eight, then the high ones.
        let lo = _mm512_permutex2var_epi64(a, _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0), b);
        let hi = _mm512_permutex2var_epi64(a, _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1), b);
        let m44 = _mm512_set1_epi64(M44 as i64);
        [
            _mm512_and_si512(lo, m44),
            _mm512_and_si512(
                _mm512_or_si512(_mm512_srli_epi64::<44>(lo), _mm512_slli_epi64::<20>(hi)),
                m44,
            ),
            _mm512_or_si512(_mm512_srli_epi64::<24>(hi), _mm512_set1_epi64(1 << 40)),
        ]
    }

    #[target_feature(enable = "avx512f,avx512ifma")]
    fn run(r: Limbs, data: &[u8]) -> (Limbs, &[u8]) {
        let (groups, rest) = data.as_chunks::<128>();
        let Some((last, groups)) = groups.split_last() else {
            return (Limbs::default(), data);
        };
        // r^1 .. r^8.
        let mut powers = [r; 8];
        let mut power = r;
        for next in powers.iter_mut().skip(1) {
            power = power.mul(r);
            *next = power;
        }
        let r8 = powers.get(7).copied().unwrap_or(r);
        let every = Multiplier::new([r8; 8]);
        // Lane l's last blocks are 8 - l from the end of the groups.
        let mut ending = powers;
        ending.reverse();
        let ending = Multiplier::new(ending);
        let add = |h: [__m512i; 3], m: [__m512i; 3]| {
            let [h0, h1, h2] = h;
            let [m0, m1, m2] = m;
            [
                _mm512_add_epi64(h0, m0),
                _mm512_add_epi64(h1, m1),
                _mm512_add_epi64(h2, m2),
            ]
        };
        let z = _mm512_setzero_si512();
        let mut h = [z, z, z];
        for group in groups {
            h = mul(add(h, load(group)), &every);
        }
        let [h0, h1, h2] = mul(add(h, load(last)), &ending);
        // Eight lanes of limbs below 2^45 sum below 2^48.
        let sum = |v: __m512i| _mm512_reduce_add_epi64(v) as u64;
        (Limbs([sum(h0), sum(h1), sum(h2)]), rest)
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod vector {
    use super::Limbs;

    pub(super) fn available() -> bool {
        false
    }

    /// No vector code on this architecture: every block goes one at a time.
    pub(super) fn blocks(_: Limbs, _: &[u8]) -> Option<(Limbs, &[u8])> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poly1305::Poly1305;
    use poly1305::universal_hash::KeyInit;

    fn reference(key: &[u8; 32], data: &[u8]) -> [u8; 16] {
        Poly1305::new(key.into()).compute_unpadded(data).into()
    }

    /// RFC 8439 §2.5.2's example.
    #[test]
    fn rfc_8439_example() {
        let key: [u8; 32] = [
            0x85, 0xd6, 0xbe, 0x78, 0x57, 0x55, 0x6d, 0x33, 0x7f, 0x44, 0x52, 0xfe, 0x42, 0xd5,
            0x06, 0xa8, 0x01, 0x03, 0x80, 0x8a, 0xfb, 0x0d, 0xb2, 0xfd, 0x4a, 0xbf, 0xf6, 0xaf,
            0x41, 0x49, 0xf5, 0x1b,
        ];
        let tag_expected: [u8; 16] = [
            0xa8, 0x06, 0x1d, 0xc1, 0x30, 0x51, 0x36, 0xc6, 0xc2, 0x2b, 0x8b, 0xaf, 0x0c, 0x01,
            0x27, 0xa9,
        ];
        assert_eq!(
            tag(&key, b"Cryptographic Forum Research Group"),
            tag_expected
        );
    }

    /// Every length to 1100 bytes and larger ones, under keys whose r and s have every
    /// limb at its largest (and small and random ones), over messages of all ones, zeros and
    /// a pattern: the same tag as RustCrypto's.
    #[test]
    fn matches_rustcrypto_for_every_length_and_extreme_values() {
        let keys: [[u8; 32]; 4] = [
            [0xff; 32],
            [0; 32],
            std::array::from_fn(|i| (i as u8).wrapping_mul(59) ^ 0xa5),
            std::array::from_fn(|i| if i < 16 { 0xff } else { 0 }),
        ];
        let lengths = (0..1100).chain([2047, 2048, 2049, 4096 + 15, 32 * 1024 + 20, 35_000]);
        for len in lengths {
            for (k, key) in keys.iter().enumerate() {
                for fill in [0xffu8, 0, 0x5b] {
                    let data: Vec<u8> = (0..len)
                        .map(|i| {
                            if fill == 0x5b {
                                (i * 31 + k) as u8
                            } else {
                                fill
                            }
                        })
                        .collect();
                    assert_eq!(
                        tag(key, &data),
                        reference(key, &data),
                        "{len} bytes, key {k}, fill {fill:#x}"
                    );
                }
            }
        }
    }

    /// The final reduction around p = 2^130 - 5 and 2^130, where it must take p away once
    /// or not at all.
    #[test]
    fn reduction_takes_p_away_exactly_when_due() {
        let p = Limbs([M44 - 4, M44, M42]);
        assert_eq!(p.reduce(), 0);
        assert_eq!(Limbs([M44 - 3, M44, M42]).reduce(), 1, "p + 1");
        assert_eq!(Limbs([M44 - 5, M44, M42]).reduce(), u128::MAX - 5, "p - 1");
        assert_eq!(Limbs([3, 0, 1 << 42]).reduce(), 8, "2^130 + 3");
        assert_eq!(Limbs([M44, M44, M42]).reduce(), 4, "2^130 - 1");
        // Limbs over their width, as the eight lanes' sum leaves them.
        assert_eq!(Limbs([1 << 47, 0, 0]).reduce(), 1 << 47);
        assert_eq!(Limbs([0, 0, 1 << 47]).reduce(), 5 << 5);
        // All three at once, as eight lanes at their largest sum: 8 * 2^130 - 8 + 2^53.
        assert_eq!(
            Limbs([8 * M44, 8 * (M44 + 64), 8 * M42]).reduce(),
            (1 << 53) + 32
        );
    }

    /// Pseudo-random keys and messages of pseudo-random lengths (xorshift: the same each run).
    #[test]
    fn matches_rustcrypto_for_random_keys_and_lengths() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let key: [u8; 32] = std::array::from_fn(|_| next() as u8);
            let len = (next() % 5000) as usize;
            let data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            assert_eq!(
                tag(&key, &data),
                reference(&key, &data),
                "key {key:?}, {len} bytes"
            );
        }
    }

    /// A CPU that lists AVX-512 IFMA runs the vector code (else the tests above checked only
    /// the one-block-at-a-time code, and would pass all the same).
    #[test]
    fn the_vector_code_runs_where_the_cpu_has_it() {
        let listed = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
            info.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "avx512ifma"))
        });
        let data = vec![7u8; 4096];
        let ran = vector::blocks(Limbs::default(), &data).is_some();
        eprintln!("AVX-512 IFMA listed by the CPU: {listed}; vector code ran: {ran}");
        if cfg!(target_arch = "x86_64") && listed {
            assert!(
                ran,
                "the CPU lists avx512ifma but the vector code did not run"
            );
        }
        let key = [3u8; 32];
        assert_eq!(tag(&key, &data), reference(&key, &data));
    }
}
