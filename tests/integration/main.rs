//! All integration tests, in one binary (one link, one template PGDATA per run).

mod support;

mod catalog;
mod lifecycle;
