//! A pass against the fake UnivaPay: what each answer does to a charge (states, events,
//! amounts), error and hostile answers, untrusted text, walls of 404s, rate limits and
//! recorded pauses, the budget and cadence, pacing, and what each run records.

mod budget;
mod errors;
mod hostile_answers;
mod lifecycle;
mod pacing;
mod pauses;
mod rate_limits;
mod run_records;
mod untrusted_text;
mod wall_of_404s;
