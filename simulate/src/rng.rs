//! The simulator's only source of randomness: SplitMix64 streams seeded by
//! a stable hash (FNV-1a) of the run's seed and a name.
//!
//! Why not `std`'s hasher or an OS-seeded generator: both differ between
//! runs and machines, and a report must be byte-identical for the same
//! input and seed. Why keyed streams rather than one generator for the
//! whole run: a task's duration then depends only on (seed, job, index), not
//! on the order the engine happens to ask in, so changing the policy cannot
//! change the work.

/// 64-bit FNV-1a over a sequence of byte strings. Each part is followed by
/// a 0xff byte (which no UTF-8 text contains), so `("ab", "c")` and
/// `("a", "bc")` hash apart.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for part in parts {
        for &b in part.iter().chain(std::iter::once(&0xffu8)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// SplitMix64 (Steele, Lea and Flood 2014): tiny, fast, and every seed,
/// zero included, gives a good stream.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// A stream for `name` under `seed` (`name` is a purpose and a key,
    /// such as "duration", the job and the task index, as separate parts).
    pub fn keyed(seed: u64, parts: &[&[u8]]) -> Self {
        let seed_bytes = seed.to_le_bytes();
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(&seed_bytes);
        all.extend_from_slice(parts);
        SplitMix64::new(fnv1a(&all))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in (0, 1]: safe to take the logarithm of.
    pub fn next_open_f64(&mut self) -> f64 {
        1.0 - self.next_f64()
    }

    /// Exponential with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * self.next_open_f64().ln()
    }

    /// Standard normal (Box-Muller; the second value is dropped so that
    /// each draw uses a fixed number of steps of the stream).
    pub fn normal(&mut self) -> f64 {
        let r = (-2.0 * self.next_open_f64().ln()).sqrt();
        let theta = std::f64::consts::TAU * self.next_f64();
        r * theta.cos()
    }

    /// An index into `weights`, chosen with probability proportional to
    /// its weight. Negative and non-finite weights count as 0; if all are
    /// 0 the first index is chosen.
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let clean = |w: f64| if w.is_finite() && w > 0.0 { w } else { 0.0 };
        let total: f64 = weights.iter().map(|&w| clean(w)).sum();
        if total <= 0.0 {
            return 0;
        }
        let mut x = self.next_f64() * total;
        for (i, &w) in weights.iter().enumerate() {
            let w = clean(w);
            if x < w {
                return i;
            }
            x -= w;
        }
        // Rounding can leave x a hair above the last weight.
        weights.iter().rposition(|&w| clean(w) > 0.0).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_published_vector_and_separates_parts() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c; ours appends 0xff per part.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        h ^= u64::from(b'a');
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        assert_eq!(h, 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
    }

    #[test]
    fn splitmix_matches_the_reference_output() {
        // First outputs of the reference implementation seeded with 0.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
    }

    #[test]
    fn uniform_draws_stay_in_range() {
        let mut r = SplitMix64::new(7);
        for _ in 0..10_000 {
            let x = r.next_f64();
            assert!((0.0..1.0).contains(&x));
            let y = r.next_open_f64();
            assert!(y > 0.0 && y <= 1.0);
        }
    }

    #[test]
    fn weighted_choice_follows_the_weights() {
        let mut r = SplitMix64::new(3);
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[r.weighted(&[0.5, 0.0, 1.5])] += 1;
        }
        assert_eq!(counts[1], 0);
        let share = f64::from(counts[2]) / 30_000.0;
        assert!((share - 0.75).abs() < 0.02, "{share}");
        assert_eq!(r.weighted(&[0.0, f64::NAN]), 0);
    }
}
