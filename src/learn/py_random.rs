//! Python's `random.Random`: the Mersenne Twister MT19937 (Matsumoto &
//! Nishimura, "Mersenne twister: a 623-dimensionally equidistributed uniform
//! pseudo-random number generator", ACM TOMACS 8 (1998) 3–30) as CPython 3.11
//! seeds and reads it (`Modules/_randommodule.c`, `Lib/random.py`).
//!
//! River's randomised learners draw from `random.Random(seed)`; drawing the
//! same numbers here, in the same order, makes the adaptive random forest
//! and the Hoeffding adaptive tree River's row by row (`tests/online.rs`)
//! and the Half-Space Trees River's tree by tree ([`super::anomaly`]).
//! Covers what they call: [`PyRandom::random`], `getrandbits` for `k ≤ 32`,
//! `_randbelow`, [`PyRandom::sample`], [`PyRandom::uniform`] and
//! [`PyRandom::choice_weighted`].

const N: usize = 624;
const M: usize = 397;

/// `random.Random(seed)` for a non-negative integer seed below 2⁶⁴.
#[derive(Debug, Clone, PartialEq)]
pub struct PyRandom {
    mt: Box<[u32; N]>,
    index: usize,
}

impl PyRandom {
    /// `random.Random(seed)`: `init_by_array` over the seed's 32-bit words,
    /// least significant first (one word for a seed below 2³²).
    pub fn new(seed: u64) -> Self {
        let key: Vec<u32> = if seed >> 32 == 0 {
            vec![seed as u32]
        } else {
            vec![seed as u32, (seed >> 32) as u32]
        };
        let mut r = Self {
            mt: Box::new([0; N]),
            index: N,
        };
        r.init_genrand(19_650_218);
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                r.mt[0] = r.mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = r.mt[i - 1] ^ (r.mt[i - 1] >> 30);
            r.mt[i] = (r.mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                r.mt[0] = r.mt[N - 1];
                i = 1;
            }
        }
        r.mt[0] = 0x8000_0000;
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.mt[0] = s;
        for i in 1..N {
            let prev = self.mt[i - 1] ^ (self.mt[i - 1] >> 30);
            self.mt[i] = 1_812_433_253u32.wrapping_mul(prev).wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            const UPPER: u32 = 0x8000_0000;
            const LOWER: u32 = 0x7fff_ffff;
            const MATRIX_A: u32 = 0x9908_b0df;
            for k in 0..N {
                let y = (self.mt[k] & UPPER) | (self.mt[(k + 1) % N] & LOWER);
                let mag = if y & 1 == 1 { MATRIX_A } else { 0 };
                self.mt[k] = self.mt[(k + M) % N] ^ (y >> 1) ^ mag;
            }
            self.index = 0;
        }
        let mut y = self.mt[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random()`: a float in [0, 1) from 53 random bits.
    pub fn random(&mut self) -> f64 {
        let a = self.next_u32() >> 5;
        let b = self.next_u32() >> 6;
        (f64::from(a) * 67_108_864.0 + f64::from(b)) * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `random.uniform(a, b)`: `a + (b - a) * random()`.
    pub fn uniform(&mut self, a: f64, b: f64) -> f64 {
        a + (b - a) * self.random()
    }

    /// `random.choices(range(len(weights)), weights)[0]`: the cumulative
    /// weights summed left to right, then `bisect_right` of `random() ·
    /// total` among them (the last index at most).
    pub fn choice_weighted(&mut self, weights: &[f64]) -> usize {
        let mut cum = Vec::with_capacity(weights.len());
        let mut total = 0.0;
        for w in weights {
            total += w;
            cum.push(total);
        }
        let x = self.random() * total;
        let hi = weights.len().saturating_sub(1);
        cum[..hi].partition_point(|&c| c <= x)
    }

    /// `getrandbits(k)` for `1 ≤ k ≤ 32`.
    fn getrandbits(&mut self, k: u32) -> u32 {
        self.next_u32() >> (32 - k)
    }

    /// `_randbelow(n)` (`n ≥ 1`): rejection sampling on `n.bit_length()` bits.
    pub fn randbelow(&mut self, n: usize) -> usize {
        let k = usize::BITS - n.leading_zeros();
        debug_assert!(k <= 32, "randbelow beyond 32 bits");
        loop {
            let r = self.getrandbits(k) as usize;
            if r < n {
                return r;
            }
        }
    }

    /// `sample(population, k)` (`k ≤ population.len()`): Python's choice of
    /// a pool (small populations) or a set of drawn positions (large ones).
    pub fn sample<T: Copy>(&mut self, population: &[T], k: usize) -> Vec<T> {
        let n = population.len();
        let mut setsize = 21usize;
        if k > 5 {
            // 4 ** ceil(log(3k, 4)), as Python computes it in floating point.
            let e = ((k * 3) as f64).ln() / 4f64.ln();
            setsize += 4usize.pow(e.ceil() as u32);
        }
        let mut out = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool = population.to_vec();
            for i in 0..k {
                let j = self.randbelow(n - i);
                out.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::with_capacity(k);
            for _ in 0..k {
                let mut j = self.randbelow(n);
                while selected.contains(&j) {
                    j = self.randbelow(n);
                }
                selected.insert(j);
                out.push(population[j]);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::PyRandom;

    // Values printed by CPython 3.11:
    // `r = random.Random(0); [r.random() for _ in range(3)]`,
    // `random.Random(42).sample(range(9), 3)`,
    // `random.Random(7).sample(range(128), 11)`,
    // `random.Random(2**40 + 5).random()`,
    // `r = random.Random(42); [r.random() for _ in range(3)]`.
    #[test]
    fn draws_as_cpython() {
        let mut r = PyRandom::new(42);
        let got: Vec<f64> = (0..3).map(|_| r.random()).collect();
        assert_eq!(
            got,
            vec![
                0.6394267984578837,
                0.025010755222666936,
                0.27502931836911926
            ]
        );
        let mut r = PyRandom::new(0);
        let got: Vec<f64> = (0..3).map(|_| r.random()).collect();
        assert_eq!(
            got,
            vec![0.8444218515250481, 0.7579544029403025, 0.420571580830845]
        );
        let v: Vec<usize> = (0..9).collect();
        assert_eq!(PyRandom::new(42).sample(&v, 3), vec![1, 0, 5]);
        let w: Vec<usize> = (0..128).collect();
        assert_eq!(
            PyRandom::new(7).sample(&w, 11),
            vec![82, 38, 101, 12, 18, 24, 93, 14, 54, 9, 22]
        );
        assert_eq!(PyRandom::new((1 << 40) + 5).random(), 0.5043802970418443);
    }
}
