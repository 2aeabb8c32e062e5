//! The S3 client. It knows nothing of files.
//!
//! - [`sigv4`]: pure request signing, proven on AWS's vectors.
//! - [`xml`]: the XML bodies.
//! - [`http`]: the client: signing, sending, retries, hedging, failover.
//! - [`ops`]: the S3 operations the client offers.
//! - [`etag`]: MD5s and ETags; [`body`]: answer bodies in their pieces.
//! - [`pace`]: how long parts take, for sending a slow one again.
//! - [`paging`]: following a listing's pages, guarded against loops.
//! - [`rules`]: S3's limits, key check and error-code table, shared by the
//!   client and [`memory`].

mod body;
pub mod config;
pub mod error;
pub mod etag;
pub mod http;
pub mod memory;
mod ops;
pub mod pace;
pub mod paging;
pub mod rules;
pub mod sigv4;
pub mod store;
pub mod types;
pub mod xml;

pub use config::{ConfigOverrides, PayloadSigning, S3Config};
pub use error::{Retry, S3Error, TransportKind};
pub use etag::{bare_etag, hex, md5_of, multipart_etag, parse_hex_md5, quote_etag, unhex};
pub use http::{Client, Counters, Op};
pub use sigv4::Credentials;
pub use store::{BucketClient, ObjectStore, StoreFuture};
pub use types::*;
