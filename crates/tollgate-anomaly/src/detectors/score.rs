//! Scores from 1 to 100 from how far a measure is past its threshold.

/// A score from how far `value` is above `threshold`: 50 at the threshold, 100 at
/// twice the threshold or more.
pub(crate) fn excess_score(value: f64, threshold: f64) -> u8 {
    if threshold <= 0.0 {
        return 100;
    }
    let over = ((value - threshold) / threshold).clamp(0.0, 1.0);
    round_score(50.0 + 50.0 * over)
}

/// A score from how far `value` is below `threshold`: 50 just under it, 100 at zero.
pub(crate) fn rarity_score(value: f64, threshold: f64) -> u8 {
    let under = (1.0 - value / threshold).clamp(0.0, 1.0);
    round_score(50.0 + 50.0 * under)
}

/// `x.round() as u8` for `x` in `[50, 100]` (or NaN), without the library call:
/// there `x + 0.5` is exact, so truncating it rounds half away from zero.
fn round_score(x: f64) -> u8 {
    (x + 0.5) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_score_is_round() {
        let mut xs = vec![f64::NAN, 50.0, 100.0];
        for k in 50..100 {
            let half = f64::from(k) + 0.5;
            xs.extend([half, half.next_down(), half.next_up(), f64::from(k) + 0.25]);
        }
        let mut x = 50.0f64;
        while x <= 100.0 {
            xs.push(x);
            x += 0.000_123_7;
        }
        for x in xs {
            assert_eq!(round_score(x), x.round() as u8, "{x}");
        }
    }

    #[test]
    fn scores() {
        assert_eq!(excess_score(10.0, 10.0), 50);
        assert_eq!(excess_score(15.0, 10.0), 75);
        assert_eq!(excess_score(100.0, 10.0), 100);
        assert_eq!(rarity_score(0.0, 0.01), 100);
        assert_eq!(rarity_score(0.005, 0.01), 75);
    }
}
