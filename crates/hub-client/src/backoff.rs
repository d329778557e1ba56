//! Exponential backoff with jitter, shared by the heartbeat loop and discovery's reconnects.

use std::time::Duration;

/// Delays that double from `min` up to `max`, each drawn at random from
/// the upper half of its step ("equal jitter"): many clients that lost the
/// same hub at the same moment spread their retries instead of arriving
/// together, and no delay is ever shorter than half its step.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        // A cap below the first step would make every delay zero (a busy
        // loop against a hub that is down): the first step wins.
        let max = max.max(min);
        Self {
            min,
            max,
            step: min,
        }
    }

    /// The next delay; each call doubles the step until `max`.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (self.step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Back to `min`, after a success.
    pub(crate) fn reset(&mut self) {
        self.step = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let steps = [100u64, 200, 400, 800, 1000, 1000];
        for step in steps {
            let d = b.next_delay();
            let step = Duration::from_millis(step);
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        let mut zero_cap = Backoff::new(Duration::from_millis(100), Duration::ZERO);
        assert!(zero_cap.next_delay() >= Duration::from_millis(50));
    }
}
