//! Integration tests: one binary, one module per area. Each test gets its own fake
//! UnivaPay on 127.0.0.1:0 and its own temporary database (see `helpers`).

mod binary;
mod daemon;
mod errors;
mod helpers;
mod lifecycle;
mod processes;
