//! Client-wide pacing of UnivaPay requests: spend the rate-limit budget fully, never
//! overdraw it on purpose, and slow everything down when a 429 comes anyway.
//!
//! UnivaPay limits each route with a token bucket (a burst, refilled continuously at
//! `X-Requests-Per-Minute-Route` per minute) and reports what is left on every answer
//! (`X-Remaining-Requests-Route`). The pacer keeps a *mirror* of that bucket that never
//! holds more than the real one is known to:
//!
//! - The mirror refills at the announced rate, up to the largest `remaining + 1` ever seen
//!   (a bucket never seen full is assumed to be small), and every request let go takes a
//!   token from it. A request goes only while the mirror holds at least `1 + RESERVE`;
//!   otherwise the pacer sleeps until the refill should get it there.
//! - Requests are numbered as they go. An answer to request `s` saying `m` tokens remain
//!   clamps the mirror down to `m - (requests let go after s)`: each of those is assumed
//!   not yet counted in `m`, the worst case. Refill is counted from when the answer
//!   arrived, later than the server counted it. So the mirror follows the server down
//!   (another program spending the same budget, a rate that changed) but never above it.
//! - Until the first answer with the headers arrives, one request at a time goes (a
//!   probe). An answer without them means the server announces no budget: requests then
//!   go unpaced (still under the configured cap and the 429 pause).
//! - A refill rate that is missing or 0 (a proxy that sends `X-Remaining-Requests-Route`
//!   alone, or absurd values) is taken as [`ASSUMED_REFILL_PER_MINUTE`]: time alone then
//!   still lets the next request go, and every answer's remaining count clamps the mirror
//!   as usual. No state of the pacer waits on something that may never come: every wait
//!   is either a time that passes or the answer to a request in flight, which ends within
//!   `api.timeout`.
//!
//! Over a long pass this settles at the refill rate with the server's bucket nearly empty
//! (a token or two of margin plus what refills during one round trip): the whole budget is
//! used, and nothing is sent that the mirror says would be refused. Because the mirror
//! refills with time alone, requests that never get an answer cannot stall it.
//!
//! The pacer keeps to the route bucket only: a pass asks about each charge once, so the
//! per-URL bucket (`*-Exact`) is never the one that runs out.
//!
//! A 429 still happens if the model is wrong or someone else drains the bucket. Then the
//! whole client stops: nothing goes until `max(Retry-After, backoff)` has passed, where the
//! backoff doubles with each 429 in a row from 1 s up to 60 s and is scaled by a random
//! factor in `[0.5, 1]` so that several clients do not come back in step. The mirror is
//! reset to an empty bucket, or, when the server never announced a budget, requests go
//! back to one probe at a time. (The charge that got the 429 is rescheduled by the pure
//! rules with its own backoff; this is the client-wide part.)
//!
//! A wait the server imposes (a 429's pause, or the refill the mirror needs) that is
//! longer than the caller's `max_pause` is not slept through: [`Pacer::acquire`] returns
//! [`Paused`] at once, so a pass can end early and leave the rest due instead of holding
//! the pass lock for an hour. The pause stays in force for later calls, and
//! [`Pacer::pause_for`] re-imposes one recorded by an earlier process.
//!
//! `api.budget_share` keeps part of the budget for the shop's own requests on the same
//! route (its checkout page, its admin screens): with a share `s`, the mirror refills at
//! `s` times the announced rate, and a request goes only if it leaves at least
//! `(1 - s) * burst` tokens (plus the reserve) in the mirror, the burst being the largest
//! bucket content seen. So the reconciler spends at most `s` of the refill and never
//! draws the bucket into the part the shop keeps; when the shop spends more than its part,
//! the answers' remaining counts pull the mirror down and the reconciler waits for them.
//! A share of 1 is the whole budget, as above.
//!
//! `api.max_requests_per_minute` adds our own ceiling: requests are spaced evenly at that
//! rate (a bucket of one token), whatever the server would allow. It is done here rather
//! than with a separate limiter crate so that one clock, tokio's, drives every wait, and
//! tests control all of it with `tokio::time::pause`.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::RateLimit;

/// Tokens left unspent in the server's bucket as a margin for rounding and clock skew.
const RESERVE: f64 = 1.0;
/// First client-wide pause after a 429 without `Retry-After`, doubled per 429 in a row.
const BACKOFF_BASE: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// The refill assumed when the server reports what remains but no rate, or a rate of 0.
pub(crate) const ASSUMED_REFILL_PER_MINUTE: u32 = 60;
/// The shortest wait: a computed wait can round to zero nanoseconds, and waiting zero
/// would look again at an unchanged clock forever. Tokio's timer has this resolution.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// What an answer said, as far as pacing is concerned.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Answer {
    /// An HTTP answer other than 429, with whatever rate-limit headers it carried.
    Http(RateLimit),
    /// A 429, with its headers and `Retry-After` if any.
    RateLimited {
        rate_limit: RateLimit,
        retry_after: Option<Duration>,
    },
    /// No HTTP answer at all (connection failed, timed out): nothing learned.
    Nothing,
}

/// Paces requests for one client. Cheap to clone; clones share the budget.
#[derive(Clone)]
pub(crate) struct Pacer {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// Waiters take turns in arrival order, so a request waiting for a token is not
    /// overtaken by one that arrived later.
    turn: tokio::sync::Mutex<()>,
    /// Wakes the waiter when an answer changes what it may do.
    changed: Notify,
}

/// The mirror of the server's route bucket.
#[derive(Debug, Clone, Copy)]
struct Mirror {
    tokens: f64,
    at: Instant,
}

struct State {
    /// Requests let go so far; the last one's number.
    issued: u64,
    /// `None` until the first answer with the headers.
    mirror: Option<Mirror>,
    /// Route refill, tokens per second (0 when unknown).
    per_sec: f64,
    /// Largest bucket content seen.
    burst: f64,
    /// The server answered without rate-limit headers before ever sending them.
    unannounced: bool,
    probe_in_flight: bool,
    blocked_until: Option<Instant>,
    rate_limited_in_a_row: u32,
    cap: Option<Cap>,
    /// `api.budget_share`, in (0, 1].
    share: f64,
}

/// Our own ceiling: a one-token bucket refilled at the configured rate.
struct Cap {
    per_sec: f64,
    tokens: f64,
    at: Instant,
}

impl Cap {
    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.per_sec).min(1.0);
        self.at = now;
    }
}

enum Wait {
    /// Our own ceiling (`api.max_requests_per_minute`): always slept through.
    For(Duration),
    /// What the server imposes (a 429's pause, the refill of its bucket): slept through
    /// only up to the caller's `max_pause`.
    Server(Duration, PauseCause),
    UntilAnswer,
}

/// Why UnivaPay makes requests wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PauseCause {
    /// A 429 (its `Retry-After`, or the backoff after 429s in a row), or a pause recorded
    /// by an earlier pass.
    RateLimited,
    /// The announced refill needs this long before the bucket holds another request.
    Refill,
}

/// The server asked for a pause longer than the caller is willing to wait; nothing was
/// sent. The pause stays in force: later requests wait for it or are refused the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Paused {
    /// How long until a request may go.
    pub(crate) wait: Duration,
    pub(crate) cause: PauseCause,
}

impl std::fmt::Display for Paused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Whole seconds, rounded up: a pause of 3599.9 s is "1h".
        let secs = self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0);
        let wait = humantime::format_duration(Duration::from_secs(secs.max(1)));
        match self.cause {
            PauseCause::RateLimited => write!(f, "UnivaPay asked for a pause of {wait} (429)"),
            PauseCause::Refill => write!(
                f,
                "UnivaPay's announced refill allows the next request only in {wait}"
            ),
        }
    }
}

/// Permission to send one request. Report the answer with [`Pacer::observe`]; dropping
/// the ticket unreported counts as "no answer".
pub(crate) struct Ticket {
    seq: u64,
    probe: bool,
    pacer: Option<Pacer>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("seq", &self.seq)
            .field("probe", &self.probe)
            .finish()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(p) = self.pacer.take() {
            p.settle(self.seq, self.probe, Answer::Nothing);
        }
    }
}

impl Pacer {
    #[cfg(test)]
    /// A pacer with an optional ceiling of requests per minute, using the whole budget.
    pub(crate) fn new(max_per_minute: Option<u32>) -> Pacer {
        Pacer::with_share(max_per_minute, 1.0)
    }

    /// A pacer that uses at most `share` (in (0, 1]; anything else counts as 1) of the
    /// announced route budget, and an optional ceiling of requests per minute.
    pub(crate) fn with_share(max_per_minute: Option<u32>, share: f64) -> Pacer {
        let share = if share > 0.0 && share <= 1.0 {
            share
        } else {
            1.0
        };
        Pacer {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    issued: 0,
                    mirror: None,
                    per_sec: 0.0,
                    burst: 0.0,
                    unannounced: false,
                    probe_in_flight: false,
                    blocked_until: None,
                    rate_limited_in_a_row: 0,
                    cap: max_per_minute.map(|n| Cap {
                        per_sec: f64::from(n) / 60.0,
                        tokens: 1.0,
                        at: Instant::now(),
                    }),
                    share,
                }),
                turn: tokio::sync::Mutex::new(()),
                changed: Notify::new(),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a handful of numbers updated together; a panic elsewhere while
        // holding the lock cannot leave it unusable.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests per minute this pacer lets go when it has work: `api.budget_share` of the
    /// route's announced refill, under `api.max_requests_per_minute`. `None` until an
    /// answer has announced the refill rate (and without a ceiling).
    pub(crate) fn budget_per_minute(&self) -> Option<f64> {
        let st = self.state();
        let ceiling = st.cap.as_ref().map(|c| c.per_sec * 60.0);
        let announced = (st.per_sec > 0.0).then(|| st.refill_per_sec() * 60.0);
        match (announced, ceiling) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        }
    }

    /// Waits until a request may go without overdrawing the budget, or returns
    /// [`Paused`] at once when the server imposes a wait longer than `max_pause`.
    pub(crate) async fn acquire(&self, max_pause: Duration) -> Result<Ticket, Paused> {
        let _turn = self.inner.turn.lock().await;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so an answer arriving in between still wakes us.
            changed.as_mut().enable();
            let wait = match self.state().try_issue(Instant::now()) {
                Ok((seq, probe)) => {
                    return Ok(Ticket {
                        seq,
                        probe,
                        pacer: Some(self.clone()),
                    });
                }
                Err(w) => w,
            };
            match wait {
                Wait::Server(d, cause) if d > max_pause => {
                    return Err(Paused { wait: d, cause });
                }
                Wait::For(d) | Wait::Server(d, _) => {
                    tokio::select! {
                        () = tokio::time::sleep(d.max(MIN_WAIT)) => {}
                        () = &mut changed => {}
                    }
                }
                Wait::UntilAnswer => changed.await,
            }
        }
    }

    /// Stops every request for `d` from now, as a 429 would (without growing the backoff):
    /// a pause that an earlier pass, perhaps of another process, recorded.
    pub(crate) fn pause_for(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut st = self.state();
        st.blocked_until = Some(st.blocked_until.map_or(until, |b| b.max(until)));
    }

    /// Reports how the request of `ticket` was answered.
    pub(crate) fn observe(&self, mut ticket: Ticket, answer: Answer) {
        ticket.pacer = None;
        self.settle(ticket.seq, ticket.probe, answer);
    }

    fn settle(&self, seq: u64, probe: bool, answer: Answer) {
        let now = Instant::now();
        let jitter = rand::random::<f64>();
        let mut st = self.state();
        if probe {
            st.probe_in_flight = false;
        }
        match answer {
            Answer::Nothing => {}
            Answer::Http(rl) => {
                st.rate_limited_in_a_row = 0;
                st.learn(seq, &rl, now);
            }
            Answer::RateLimited {
                rate_limit,
                retry_after,
            } => {
                st.learn(seq, &rate_limit, now);
                st.rate_limited_in_a_row = st.rate_limited_in_a_row.saturating_add(1);
                let backoff = crate::domain::backoff(
                    st.rate_limited_in_a_row,
                    BACKOFF_BASE,
                    BACKOFF_MAX,
                    jitter,
                );
                let pause = backoff.max(retry_after.unwrap_or(Duration::ZERO));
                let until = now + pause;
                st.blocked_until = Some(st.blocked_until.map_or(until, |b| b.max(until)));
                if st.mirror.is_some() {
                    // The server's bucket is empty now, whatever we thought.
                    st.mirror = Some(Mirror {
                        tokens: 0.0,
                        at: now,
                    });
                } else {
                    // A 429 from a server that never announced a budget (a proxy or WAF in
                    // front of it, say): there is no bucket to model, so after the pause
                    // one probe goes, and its answer decides again.
                    st.unannounced = false;
                }
                tracing::warn!(
                    pause_ms = pause.as_millis() as u64,
                    retry_after_s = retry_after.map(|d| d.as_secs()),
                    "rate limited by UnivaPay; pausing all requests"
                );
            }
        }
        drop(st);
        self.inner.changed.notify_waiters();
    }
}

impl State {
    /// Lets a request go (its number, and whether it is the probe), or says how to wait.
    fn try_issue(&mut self, now: Instant) -> Result<(u64, bool), Wait> {
        if let Some(until) = self.blocked_until {
            if until > now {
                return Err(Wait::Server(until - now, PauseCause::RateLimited));
            }
            self.blocked_until = None;
        }
        if let Some(cap) = &mut self.cap {
            cap.refill(now);
            if cap.tokens < 1.0 {
                return Err(Wait::For(Duration::from_secs_f64(
                    (1.0 - cap.tokens) / cap.per_sec,
                )));
            }
        }
        let mut probe = false;
        let need = 1.0 + RESERVE + self.kept_for_others();
        let (per_sec, cap) = (self.refill_per_sec(), self.cap_tokens());
        match &mut self.mirror {
            Some(m) => {
                m.refill(now, per_sec, cap);
                if m.tokens < need {
                    let wait = Duration::try_from_secs_f64((need - m.tokens) / per_sec)
                        .unwrap_or(Duration::MAX);
                    return Err(Wait::Server(wait, PauseCause::Refill));
                }
                m.tokens -= 1.0;
            }
            None if self.unannounced => {}
            None if self.probe_in_flight => return Err(Wait::UntilAnswer),
            None => probe = true,
        }
        if probe {
            self.probe_in_flight = true;
        }
        if let Some(cap) = &mut self.cap {
            cap.tokens -= 1.0;
        }
        self.issued += 1;
        Ok((self.issued, probe))
    }

    /// The refill rate in tokens per second: the announced one, or
    /// [`ASSUMED_REFILL_PER_MINUTE`] when none (or 0) was announced, so that the mirror
    /// always refills with time.
    fn refill_rate(&self) -> f64 {
        if self.per_sec.is_finite() && self.per_sec > 0.0 {
            self.per_sec
        } else {
            f64::from(ASSUMED_REFILL_PER_MINUTE) / 60.0
        }
    }

    /// Most tokens the mirror may hold: the largest bucket content seen, and never less
    /// than one request needs (a bucket seen only near empty could otherwise never hold
    /// enough).
    fn cap_tokens(&self) -> f64 {
        self.burst.max(1.0 + RESERVE + self.kept_for_others())
    }

    /// The mirror's refill: our share of the announced rate. The server refills faster
    /// when others spend less; the mirror stays at or below it either way.
    fn refill_per_sec(&self) -> f64 {
        self.refill_rate() * self.share
    }

    /// Tokens a request must leave in the server's bucket for the shop's own requests:
    /// the part of the burst that is not ours.
    fn kept_for_others(&self) -> f64 {
        (1.0 - self.share) * self.burst
    }

    fn learn(&mut self, seq: u64, rl: &RateLimit, now: Instant) {
        if let Some(pm) = rl.per_minute_route {
            self.per_sec = pm as f64 / 60.0;
        }
        let Some(remaining) = rl.remaining_route else {
            if self.mirror.is_none() && rl.is_empty() {
                self.unannounced = true;
            }
            return;
        };
        self.unannounced = false;
        let remaining = remaining as f64;
        self.burst = self.burst.max(remaining + 1.0);
        let at_most = remaining - (self.issued - seq) as f64;
        let (per_sec, cap) = (self.refill_per_sec(), self.cap_tokens());
        match &mut self.mirror {
            Some(m) => {
                m.refill(now, per_sec, cap);
                m.tokens = m.tokens.min(at_most);
            }
            None => {
                self.mirror = Some(Mirror {
                    tokens: at_most,
                    at: now,
                })
            }
        }
    }
}

impl Mirror {
    fn refill(&mut self, now: Instant, per_sec: f64, cap: f64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        // Only refill raises the mirror; a clamp below the cap stays until time lifts it.
        if self.tokens < cap {
            self.tokens = (self.tokens + dt * per_sec).min(cap);
        }
        self.at = self.at.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use univapay_sim::{Limit, TokenBucket};

    /// A caller that waits out any pause.
    const WAIT_ANY: Duration = Duration::MAX;

    fn headers(remaining: u64, per_minute: u64) -> RateLimit {
        RateLimit {
            remaining_exact: Some(remaining),
            remaining_route: Some(remaining),
            per_minute_exact: Some(per_minute),
            per_minute_route: Some(per_minute),
        }
    }

    /// `n` requests from `workers` concurrent tasks against a bucket with the given limit,
    /// each request taking `latency` there and back. Returns (429s, elapsed).
    async fn run(
        pacer: &Pacer,
        limit: Limit,
        n: u64,
        workers: u64,
        latency: Duration,
    ) -> (u64, Duration) {
        let server = Arc::new(Mutex::new(TokenBucket::new(limit, Instant::now())));
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = vec![];
        for _ in 0..workers {
            let (pacer, server, refused, next) =
                (pacer.clone(), server.clone(), refused.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                use std::sync::atomic::Ordering::SeqCst;
                while next.fetch_add(1, SeqCst) < n {
                    loop {
                        let ticket = pacer.acquire(WAIT_ANY).await.unwrap();
                        tokio::time::sleep(latency / 2).await;
                        let taken = server.lock().unwrap().try_take(Instant::now());
                        tokio::time::sleep(latency / 2).await;
                        match taken {
                            Ok(left) => {
                                pacer.observe(
                                    ticket,
                                    Answer::Http(headers(left, limit.per_minute.into())),
                                );
                                break;
                            }
                            Err(_) => {
                                refused.fetch_add(1, SeqCst);
                                pacer.observe(
                                    ticket,
                                    Answer::RateLimited {
                                        rate_limit: headers(0, limit.per_minute.into()),
                                        retry_after: None,
                                    },
                                );
                            }
                        }
                    }
                }
            }));
        }
        // Simulated time: a pacer that never lets the last request go fails here.
        tokio::time::timeout(
            Duration::from_secs(24 * 3600),
            futures::future::join_all(tasks),
        )
        .await
        .expect("all requests went");
        (
            refused.load(std::sync::atomic::Ordering::SeqCst),
            start.elapsed(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_run_uses_the_whole_budget_without_a_429() {
        let limit = Limit::new(20, 600);
        let pacer = Pacer::new(None);
        let (refused, elapsed) = run(&pacer, limit, 400, 16, Duration::from_millis(40)).await;
        assert_eq!(refused, 0);
        // The burst goes at once; the other 380 can go no faster than 10 per second.
        let bound = Duration::from_secs(38);
        assert!(elapsed >= bound, "{elapsed:?}");
        assert!(
            elapsed.as_secs_f64() <= bound.as_secs_f64() / 0.95,
            "uses at least 95 % of the budget: {elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fast_and_slow_answers_and_one_worker_all_stay_in_budget() {
        for (workers, latency_ms) in [(1, 0), (64, 1), (64, 300), (4, 2000)] {
            let pacer = Pacer::new(None);
            let (refused, _) = run(
                &pacer,
                Limit::new(5, 120),
                60,
                workers,
                Duration::from_millis(latency_ms),
            )
            .await;
            assert_eq!(refused, 0, "{workers} workers, {latency_ms} ms");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_one_probe_before_the_budget_is_known() {
        let pacer = Pacer::new(None);
        let first = pacer.acquire(WAIT_ANY).await.unwrap();
        let second = tokio::spawn({
            let p = pacer.clone();
            async move { p.acquire(WAIT_ANY).await.unwrap() }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!second.is_finished(), "waits for the probe's answer");
        pacer.observe(first, Answer::Http(headers(50, 600)));
        let second = tokio::time::timeout(Duration::from_millis(1), second)
            .await
            .expect("goes once the answer is in")
            .unwrap();
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_without_headers_is_not_paced() {
        let pacer = Pacer::new(None);
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        pacer.observe(t, Answer::Http(RateLimit::default()));
        let start = Instant::now();
        let tickets: Vec<_> =
            futures::future::join_all((0..100).map(|_| pacer.acquire(WAIT_ANY))).await;
        assert_eq!(tickets.len(), 100);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_stops_every_request_that_long() {
        let pacer = Pacer::new(None);
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        pacer.observe(t, Answer::Http(headers(100, 6000)));
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        let at = Instant::now();
        pacer.observe(
            t,
            Answer::RateLimited {
                rate_limit: RateLimit::default(),
                retry_after: Some(Duration::from_secs(7)),
            },
        );
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let p = pacer.clone();
                tokio::spawn(async move {
                    let t = p.acquire(WAIT_ANY).await.unwrap();
                    let when = Instant::now();
                    p.observe(t, Answer::Http(headers(100, 6000)));
                    when
                })
            })
            .collect();
        for w in waiting {
            let when = w.await.unwrap();
            assert!(when - at >= Duration::from_secs(7), "{:?}", when - at);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_without_retry_after_backs_off_with_jitter_and_growth() {
        let pacer = Pacer::new(None);
        let mut pauses = vec![];
        for _ in 0..4 {
            let t = pacer.acquire(WAIT_ANY).await.unwrap();
            let at = Instant::now();
            pacer.observe(
                t,
                Answer::RateLimited {
                    rate_limit: headers(0, 6000),
                    retry_after: None,
                },
            );
            let next = pacer.acquire(WAIT_ANY).await.unwrap();
            pauses.push(Instant::now() - at);
            pacer.observe(next, Answer::Nothing);
        }
        // 1 s, 2 s, 4 s, 8 s, each scaled into [half, whole].
        for (i, p) in pauses.iter().enumerate() {
            let full = Duration::from_secs(1 << i);
            assert!(
                *p >= full / 2 && *p <= full + Duration::from_millis(50),
                "{i}: {p:?}"
            );
        }
        // A good answer ends the run of 429s.
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        pacer.observe(t, Answer::Http(headers(50, 6000)));
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        let at = Instant::now();
        pacer.observe(
            t,
            Answer::RateLimited {
                rate_limit: headers(0, 6000),
                retry_after: None,
            },
        );
        drop(pacer.acquire(WAIT_ANY).await.unwrap());
        assert!(Instant::now() - at <= Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_configured_cap_spaces_requests_evenly() {
        let pacer = Pacer::new(Some(120));
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        pacer.observe(t, Answer::Http(headers(10_000, 1_000_000)));
        let start = Instant::now();
        for _ in 0..10 {
            let t = pacer.acquire(WAIT_ANY).await.unwrap();
            pacer.observe(t, Answer::Http(headers(10_000, 1_000_000)));
        }
        // 120 per minute is one every 500 ms, whatever the server would allow.
        assert_eq!(start.elapsed(), Duration::from_millis(5000));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_probe_lets_another_go() {
        let pacer = Pacer::new(None);
        let probe = pacer.acquire(WAIT_ANY).await.unwrap();
        drop(probe);
        let again = tokio::time::timeout(Duration::from_millis(1), pacer.acquire(WAIT_ANY)).await;
        assert!(again.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_older_answer_never_raises_the_estimate() {
        let pacer = Pacer::new(None);
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        pacer.observe(t, Answer::Http(headers(10, 60)));
        let a = pacer.acquire(WAIT_ANY).await.unwrap();
        let b = pacer.acquire(WAIT_ANY).await.unwrap();
        // b (newer) says the bucket is nearly empty; a (older) arrives later with more.
        pacer.observe(b, Answer::Http(headers(1, 60)));
        pacer.observe(a, Answer::Http(headers(9, 60)));
        let start = Instant::now();
        drop(pacer.acquire(WAIT_ANY).await.unwrap());
        // Needs 2 tokens from 1 at one per second.
        assert!(
            start.elapsed() >= Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_never_get_an_answer_do_not_stall_it() {
        let pacer = Pacer::new(None);
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        pacer.observe(t, Answer::Http(headers(5, 60)));
        let start = Instant::now();
        for _ in 0..20 {
            let t = tokio::time::timeout(Duration::from_secs(60), pacer.acquire(WAIT_ANY))
                .await
                .expect("keeps going")
                .unwrap();
            pacer.observe(t, Answer::Nothing);
        }
        // Four at once (one token kept in reserve), then one a second.
        assert_eq!(start.elapsed(), Duration::from_secs(16));
    }

    fn route(remaining: Option<u64>, per_minute: Option<u64>) -> RateLimit {
        RateLimit {
            remaining_route: remaining,
            per_minute_route: per_minute,
            ..RateLimit::default()
        }
    }

    fn too_many(rate_limit: RateLimit, retry_after: Option<u64>) -> Answer {
        Answer::RateLimited {
            rate_limit,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    /// The first answer a WAF or CDN might give: 429, no headers at all.
    #[tokio::test(start_paused = true)]
    async fn a_429_without_headers_before_any_budget_does_not_stall() {
        let pacer = Pacer::new(None);
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        pacer.observe(t, too_many(RateLimit::default(), None));
        let start = Instant::now();
        let t = tokio::time::timeout(Duration::from_secs(5), pacer.acquire(WAIT_ANY))
            .await
            .expect("goes after the backoff")
            .unwrap();
        assert!(start.elapsed() <= Duration::from_secs(1));
        // One probe at a time until an answer says how things are.
        let second = tokio::time::timeout(Duration::from_secs(5), pacer.acquire(WAIT_ANY)).await;
        assert!(
            second.is_err(),
            "a second request waits for the probe's answer"
        );
        pacer.observe(t, Answer::Http(RateLimit::default()));
        let start = Instant::now();
        let all = futures::future::join_all((0..50).map(|_| pacer.acquire(WAIT_ANY))).await;
        assert!(all.iter().all(Result::is_ok));
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "no budget announced: unpaced"
        );
    }

    /// A count of what remains without a refill rate, or a refill rate of 0: the mirror
    /// can only be raised by time, so a rate is assumed rather than waiting forever.
    #[tokio::test(start_paused = true)]
    async fn remaining_without_refill_or_a_refill_of_zero_keeps_going() {
        for per_minute in [None, Some(0)] {
            let pacer = Pacer::new(None);
            let start = Instant::now();
            for _ in 0..10 {
                let t = tokio::time::timeout(Duration::from_secs(5), pacer.acquire(WAIT_ANY))
                    .await
                    .unwrap_or_else(|_| panic!("stalled with per_minute {per_minute:?}"))
                    .unwrap();
                pacer.observe(t, Answer::Http(route(Some(0), per_minute)));
            }
            // Two tokens at the assumed one per second for each request after the first.
            assert!(
                start.elapsed() <= Duration::from_secs(20),
                "{:?}",
                start.elapsed()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_caller_waits_is_refused_at_once_and_kept() {
        let pacer = Pacer::new(None);
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        pacer.observe(t, Answer::Http(headers(100, 6000)));
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        pacer.observe(t, too_many(headers(0, 6000), Some(3600)));
        let start = Instant::now();
        let max = Duration::from_secs(30);
        let p = pacer.acquire(max).await.expect_err("refused");
        assert_eq!(start.elapsed(), Duration::ZERO, "not slept through");
        assert_eq!(p.cause, PauseCause::RateLimited);
        assert!(p.wait > Duration::from_secs(3599), "{p:?}");
        assert!(p.to_string().contains("pause of 1h"), "{p}");
        // Still in force for the next caller; its last ten seconds are waited out.
        tokio::time::advance(Duration::from_secs(3590)).await;
        let start = Instant::now();
        let t = pacer.acquire(max).await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_secs(9),
            "{:?}",
            start.elapsed()
        );
        // A short pause is waited out.
        pacer.observe(t, too_many(headers(0, 6000), Some(2)));
        let start = Instant::now();
        assert!(pacer.acquire(max).await.is_ok());
        assert!(start.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_recorded_earlier_holds_every_request() {
        let pacer = Pacer::new(None);
        pacer.pause_for(Duration::from_secs(90));
        let p = pacer.acquire(Duration::from_secs(30)).await.unwrap_err();
        assert_eq!(p.cause, PauseCause::RateLimited);
        pacer.pause_for(Duration::from_secs(5));
        assert!(
            pacer.acquire(Duration::from_secs(30)).await.is_err(),
            "the longer one stands"
        );
        let start = Instant::now();
        drop(pacer.acquire(WAIT_ANY).await.unwrap());
        assert!(start.elapsed() >= Duration::from_secs(89));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refill_too_slow_for_a_pass_is_a_pause_too() {
        let pacer = Pacer::new(None);
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        // One request a minute and none left: the two tokens a request needs take two
        // minutes, longer than a pass should sit waiting.
        pacer.observe(t, Answer::Http(route(Some(0), Some(1))));
        let p = pacer.acquire(Duration::from_secs(30)).await.unwrap_err();
        assert_eq!(p.cause, PauseCause::Refill);
    }

    fn answer_strategy() -> impl Strategy<Value = (u8, Option<u64>, Option<u64>, Option<u64>)> {
        let count = prop_oneof![
            Just(None),
            (0u64..5).prop_map(Some),
            (0u64..1_000_000).prop_map(Some),
            Just(Some(u64::MAX)),
        ];
        let rate = prop_oneof![
            Just(None),
            Just(Some(0)),
            (1u64..100).prop_map(Some),
            (1u64..10_000_000).prop_map(Some),
            Just(Some(u64::MAX)),
        ];
        let retry = prop_oneof![Just(None), (0u64..120).prop_map(Some), Just(Some(3600))];
        (0u8..4, count, rate, retry)
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever headers arrive (none, some, absurd, contradictory, 429s with or without
        /// them), the next request either goes within a bounded time or is refused at once
        /// as a pause longer than the caller waits: the pacer never waits on nothing.
        #[test]
        fn any_answers_lead_to_progress_or_a_bounded_refusal(
            answers in proptest::collection::vec(answer_strategy(), 1..30),
            cap in proptest::option::of(1u32..1000),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let max = Duration::from_secs(30);
                let pacer = Pacer::new(cap);
                for (kind, remaining, per_minute, retry) in answers {
                    // The longest honest wait: a pause up to `max`, then a refill up to
                    // `max`, then our own ceiling's spacing (at most a minute).
                    let got = tokio::time::timeout(max * 3 + Duration::from_secs(61), pacer.acquire(max))
                        .await
                        .expect("acquire ended");
                    let t = match got {
                        Ok(t) => t,
                        Err(p) => {
                            assert!(p.wait > max, "{p:?}");
                            tokio::time::advance(p.wait).await;
                            continue;
                        }
                    };
                    let rl = RateLimit {
                        remaining_route: remaining,
                        per_minute_route: per_minute,
                        remaining_exact: remaining,
                        per_minute_exact: None,
                    };
                    let answer = match kind {
                        0 => Answer::Nothing,
                        1 => too_many(rl, retry),
                        _ => Answer::Http(rl),
                    };
                    pacer.observe(t, answer);
                }
            });
        }
    }

    /// The shop's own requests against the same server bucket: three at once (a page
    /// that reads a few things) every `every`. Returns (sent, refused) once `stop` is set.
    fn foreground(
        server: Arc<Mutex<TokenBucket>>,
        every: Duration,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> tokio::task::JoinHandle<(u64, u64)> {
        tokio::spawn(async move {
            let (mut sent, mut refused) = (0, 0);
            let mut tick = tokio::time::interval(every);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                tick.tick().await;
                for _ in 0..3 {
                    sent += 1;
                    if server.lock().unwrap().try_take(Instant::now()).is_err() {
                        refused += 1;
                    }
                }
            }
            (sent, refused)
        })
    }

    /// `n` requests from 16 tasks through `pacer`, each taking 40 ms there and back,
    /// while the shop sends three requests every `foreground_every` to the same bucket.
    /// Returns (our 429s, the shop's requests, the shop's 429s, elapsed).
    async fn run_beside_the_shop(
        pacer: &Pacer,
        limit: Limit,
        n: u64,
        foreground_every: Duration,
    ) -> (u64, u64, u64, Duration) {
        let server = Arc::new(Mutex::new(TokenBucket::new(limit, Instant::now())));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shop = foreground(server.clone(), foreground_every, stop.clone());
        let ours = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let start = Instant::now();
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (pacer, server, ours, next) =
                    (pacer.clone(), server.clone(), ours.clone(), next.clone());
                tokio::spawn(async move {
                    use std::sync::atomic::Ordering::SeqCst;
                    while next.fetch_add(1, SeqCst) < n {
                        let ticket = pacer.acquire(WAIT_ANY).await.unwrap();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let taken = server.lock().unwrap().try_take(Instant::now());
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let per_minute = limit.per_minute.into();
                        let answer = match taken {
                            Ok(left) => Answer::Http(headers(left, per_minute)),
                            Err(_) => {
                                ours.fetch_add(1, SeqCst);
                                Answer::RateLimited {
                                    rate_limit: headers(0, per_minute),
                                    retry_after: None,
                                }
                            }
                        };
                        pacer.observe(ticket, answer);
                    }
                })
            })
            .collect();
        futures::future::join_all(tasks).await;
        let elapsed = start.elapsed();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (sent, refused) = shop.await.unwrap();
        (
            ours.load(std::sync::atomic::Ordering::SeqCst),
            sent,
            refused,
            elapsed,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_of_half_leaves_the_shop_its_half() {
        // Burst 20, 10 per second. The shop asks 4 times a second, within its half.
        let limit = Limit::new(20, 600);
        let pacer = Pacer::with_share(None, 0.5);
        let (ours, sent, refused, elapsed) =
            run_beside_the_shop(&pacer, limit, 300, Duration::from_millis(750)).await;
        assert_eq!(ours, 0, "we never met a 429");
        assert!(sent > 200, "{sent}");
        assert_eq!(refused, 0, "the shop never met a 429");
        // Our half of the burst at once (10, less the reserve), then 5 per second: no
        // faster, and not much slower.
        assert!(elapsed >= Duration::from_secs(57), "{elapsed:?}");
        assert!(elapsed <= Duration::from_secs(64), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_whole_budget_starves_the_shop() {
        // The same run with share 1 (the pacer before budget_share): the shop's requests
        // meet the empty bucket the reconciler keeps.
        let pacer = Pacer::with_share(None, 1.0);
        let (_, _, refused, _) =
            run_beside_the_shop(&pacer, Limit::new(20, 600), 300, Duration::from_millis(750)).await;
        assert!(refused > 0, "{refused}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shop_that_spends_more_than_its_part_slows_us_down() {
        // The shop takes 8 of the 10 per second: we follow the remaining counts down to
        // the 2 left, and the shop still never meets a 429.
        let limit = Limit::new(20, 600);
        let pacer = Pacer::with_share(None, 0.5);
        let (ours, _, refused, elapsed) =
            run_beside_the_shop(&pacer, limit, 100, Duration::from_millis(375)).await;
        assert_eq!(refused, 0);
        assert!(ours <= 1, "{ours}");
        // About 2 per second after the first handful: roughly 45 s, far from the 19 s
        // our share alone would take.
        assert!(elapsed >= Duration::from_secs(35), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_is_the_share_under_the_ceiling() {
        let pacer = Pacer::with_share(None, 0.5);
        assert_eq!(pacer.budget_per_minute(), None, "not announced yet");
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        pacer.observe(t, Answer::Http(headers(99, 1200)));
        assert_eq!(pacer.budget_per_minute(), Some(600.0));
        let capped = Pacer::with_share(Some(300), 0.5);
        assert_eq!(capped.budget_per_minute(), Some(300.0), "the ceiling alone");
        let t = capped.acquire(WAIT_ANY).await.unwrap();
        capped.observe(t, Answer::Http(headers(99, 1200)));
        assert_eq!(capped.budget_per_minute(), Some(300.0));
        let whole = Pacer::with_share(None, 7.0);
        let t = whole.acquire(WAIT_ANY).await.unwrap();
        whole.observe(t, Answer::Http(headers(99, 1200)));
        assert_eq!(whole.budget_per_minute(), Some(1200.0), "out of range: all");
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_never_takes_the_bucket_below_the_shops_part() {
        let pacer = Pacer::with_share(None, 0.25);
        let t = pacer.acquire(WAIT_ANY).await.unwrap();
        pacer.observe(t, Answer::Http(headers(99, 60)));
        // Burst 100: 75 tokens are the shop's and 2 must be there for one request; 99
        // left after the probe, so 23 go at once and the next waits for the refill.
        for _ in 0..23 {
            let t = tokio::time::timeout(Duration::from_millis(1), pacer.acquire(WAIT_ANY))
                .await
                .expect("within our part of the burst")
                .unwrap();
            pacer.observe(t, Answer::Nothing);
        }
        let start = Instant::now();
        drop(pacer.acquire(WAIT_ANY).await.unwrap());
        // A quarter of one per second: four seconds for the next token.
        assert_eq!(start.elapsed(), Duration::from_secs(4));
    }
}
