//! A timer for deadlines that mostly move later: the HTTP/1 loop's idle, header and body
//! limits, and the upstream response-head timeout, two per client connection.
//!
//! A tokio timer registered and removed for every request was about 1 % of the worker's CPU
//! under keep-alive load. Here the timer is re-armed only when it would fire too late or has
//! fired; one that fires early is checked against the real deadline and moved.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

pub struct LazyTimer {
    sleep: Pin<Box<Sleep>>,
    /// Where the timer is set, when it is.
    armed: Option<Instant>,
}

impl Default for LazyTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl LazyTimer {
    /// Unarmed: registered with the runtime only when first polled.
    pub fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
        }
    }

    /// Armed for `deadline`.
    pub fn at(deadline: Instant) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            armed: Some(deadline),
        }
    }

    /// Ready once `deadline` has passed; registers the task's waker otherwise.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        loop {
            let early_enough = self.armed.is_some_and(|armed| armed <= deadline);
            if !early_enough || self.sleep.is_elapsed() {
                self.sleep.as_mut().reset(deadline);
                self.armed = Some(deadline);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.armed = None;
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            // Fired for an earlier request's deadline: set it for this one.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn fires_at_each_deadline_even_after_an_earlier_one() {
        let mut t = LazyTimer::new();
        let start = Instant::now();
        // A deadline that is met by a response: the timer stays armed for it.
        let first = start + Duration::from_secs(10);
        assert!(
            std::future::poll_fn(|cx| Poll::Ready(t.poll_expired(cx, first)))
                .await
                .is_pending()
        );
        // The next request's deadline is later; the early timer must not end it early.
        tokio::time::advance(Duration::from_secs(5)).await;
        let second = Instant::now() + Duration::from_secs(10);
        std::future::poll_fn(|cx| t.poll_expired(cx, second)).await;
        assert!(Instant::now() >= second);
        // A sooner deadline re-arms the timer.
        let third = Instant::now() + Duration::from_secs(1);
        std::future::poll_fn(|cx| t.poll_expired(cx, third)).await;
        assert!(Instant::now() >= third && Instant::now() < third + Duration::from_millis(10));
    }
}
