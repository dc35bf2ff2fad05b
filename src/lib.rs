//! switchyard: one OpenAI-compatible endpoint in front of many LLM backends.
//!
//! The request path, outer to inner: `server` (accept, hygiene) →
//! `gateway` (request id, auth, body, route, rescue) → `dispatch`
//! (target choice, upstream call) → `adapter` (dialect) → `upstream`
//! (pooled transport) → `stream` (relay back to the client).
//! See ARCHITECTURE.md.

pub mod adapter;
pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod call;
pub mod chat;
pub mod cli;
pub mod config;
pub mod deferred;
pub mod discovery;
pub mod dispatch;
pub mod error;
pub mod gateway;
pub mod headers;
pub mod inplace;
pub mod json;
pub mod limits;
pub mod metrics;
pub mod openai;
pub mod provider;
pub mod registry;
pub mod route;
pub mod secret;
pub mod server;
pub mod stream;
pub mod telemetry;
pub mod upstream;
