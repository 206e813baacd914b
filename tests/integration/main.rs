//! All integration tests, in one binary (one link, one template PGDATA per run).

mod support;

mod api;
mod audit;
mod auth;
mod autoscaling;
mod catalog;
mod deploy;
mod ext_server;
mod faults_config;
mod faults_http;
mod faults_pgdata;
mod faults_schema;
mod faults_signals;
mod harness;
mod http;
mod leases;
mod lfc;
mod lifecycle;
mod neon2026;
mod operate;
mod plan;
mod routes2026;
mod storage;
mod subscriptions;
mod tls;
mod versions;
