//! Test support: a byte stream cut into pieces at arbitrary points, the way reads and writes
//! split it on a real socket. The property tests of every parser lameduck owns feed their
//! input through it, to show that where a stream is cut changes nothing.

use proptest::sample::Index;

/// `bytes` cut at `cuts` (in any order; duplicates and the ends ignored) into non-empty
/// pieces, in order.
pub fn cut<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    points.extend([0, bytes.len()]);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

/// Up to `max` bytes, each any byte or (as often) one of `alphabet`: the bytes a parser
/// branches on, so that random input reaches past its first check.
pub fn bytes_leaning_on(
    alphabet: &'static [u8],
    max: usize,
) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    proptest::collection::vec(prop_oneof![any::<u8>(), proptest::sample::select(alphabet)], 0..max)
}

/// Up to `max` places to cut a stream at, for [`cut`].
pub fn cut_points(max: usize) -> impl proptest::strategy::Strategy<Value = Vec<Index>> {
    proptest::collection::vec(proptest::prelude::any::<Index>(), 0..max)
}

/// Bytes from [`bytes_leaning_on`] with places to cut them at ([`cut_points`]).
pub fn input_and_cuts(
    alphabet: &'static [u8],
    max: usize,
    max_cuts: usize,
) -> impl proptest::strategy::Strategy<Value = (Vec<u8>, Vec<Index>)> {
    (bytes_leaning_on(alphabet, max), cut_points(max_cuts))
}
