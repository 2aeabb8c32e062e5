//! Answer bodies: kept in the pieces they arrived in, or read up to a cap.

use bytes::{Bytes, BytesMut};

/// A body kept in the pieces the connection delivered, without gathering
/// it into one buffer. Each piece is a slice of hyper's read buffer and
/// keeps that whole buffer alive (up to ~408 KiB): a large piece fills most
/// of its buffer and is kept as it is, but small ones (a slow or far
/// server delivers a few KiB per read) would pin far more memory than
/// they hold, so they are copied together into buffers of at most
/// [`Pieces::GATHER`] bytes, sized to what is left of the body.
pub(super) struct Pieces {
    kept: Vec<Bytes>,
    small: BytesMut,
    /// Bytes of the body not yet seen (from Content-Length; 0 if unknown).
    left: u64,
}

impl Pieces {
    /// Pieces at least this large are kept as they are.
    pub(super) const KEEP: usize = 128 * 1024;
    /// Largest buffer small pieces are gathered into.
    pub(super) const GATHER: usize = 1024 * 1024;

    pub(super) fn new(content_length: u64) -> Self {
        Pieces {
            kept: Vec::new(),
            small: BytesMut::new(),
            left: content_length,
        }
    }

    pub(super) fn push(&mut self, piece: Bytes) {
        self.left = self.left.saturating_sub(piece.len() as u64);
        if piece.len() >= Self::KEEP {
            self.flush();
            self.kept.push(piece);
            return;
        }
        if piece.is_empty() {
            return;
        }
        if self.small.capacity() - self.small.len() < piece.len() {
            self.flush();
            let want = (piece.len() as u64 + self.left).min(Self::GATHER as u64) as usize;
            self.small.reserve(want.max(piece.len()));
        }
        self.small.extend_from_slice(&piece);
    }

    fn flush(&mut self) {
        if !self.small.is_empty() {
            self.kept.push(self.small.split().freeze());
        }
    }

    pub(super) fn finish(mut self) -> Vec<Bytes> {
        self.flush();
        self.kept
    }
}

pub(super) async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Bytes {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        out.extend_from_slice(&chunk);
        if out.len() >= cap {
            out.truncate(cap);
            break;
        }
    }
    Bytes::from(out)
}
