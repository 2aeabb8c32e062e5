//! The S3 client. It knows nothing of files.
//!
//! - [`sigv4`]: pure request signing, proven on AWS's vectors.
//! - [`xml`]: the XML bodies.
//! - [`http`]: the client and its operations, retries and error mapping.
//! - [`pace`]: how long parts take, for sending a slow one again.
//! - [`rules`]: S3's limits, key check and error-code table, shared by the
//!   client and [`memory`].

pub mod config;
pub mod error;
pub mod http;
pub mod memory;
pub mod pace;
pub mod rules;
pub mod sigv4;
pub mod store;
pub mod types;
pub mod xml;

pub use config::{ConfigOverrides, PayloadSigning, S3Config};
pub use error::{Retry, S3Error, TransportKind};
pub use http::{
    bare_etag, hex, md5_of, multipart_etag, parse_hex_md5, unhex, Client, Counters, Op,
};
pub use sigv4::Credentials;
pub use store::{BucketClient, ObjectStore, StoreFuture};
pub use types::*;
