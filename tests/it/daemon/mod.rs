//! The daemon: the job loop on its cron schedule and its shutdown drain, the process under
//! systemd (notify, signals, the pass lock between processes), and wall-clock steps.

mod clock_step;
mod processes;
mod schedule;
