//! The faces permd answers on. Thin adapters: decode, call the index, encode.

pub mod forward;
pub mod grpc;
pub mod http;
pub mod proxy;
pub mod reads;
