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

#[cfg(test)]
mod tests {
    use super::*;

    /// Large pieces of a body are kept as they are (the very bytes, no
    /// copy); small ones are copied together into buffers of at most 1 MiB,
    /// so a body delivered a few KiB at a time pins no more memory than it
    /// holds; the pieces in order are the body.
    #[test]
    fn small_pieces_are_gathered_large_ones_kept() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut sizes = vec![10_240; 5];
        sizes.extend([200 * 1024, 3, 130 * 1024, 1]);
        sizes.extend(std::iter::repeat_n(4096, 600)); // 2.3 MiB in 4 KiB pieces
        sizes.push(Pieces::KEEP);
        sizes.push(Pieces::KEEP - 1);
        let input: Vec<Bytes> = sizes
            .iter()
            .map(|&n| {
                let mut v = vec![0u8; n];
                rng.fill(&mut v);
                Bytes::from(v)
            })
            .collect();
        let total: usize = sizes.iter().sum();
        let mut p = Pieces::new(total as u64);
        for piece in &input {
            p.push(piece.clone());
            p.push(Bytes::new());
        }
        let out = p.finish();
        let joined: Vec<u8> = out.iter().flat_map(|b| b.iter().copied()).collect();
        let expected: Vec<u8> = input.iter().flat_map(|b| b.iter().copied()).collect();
        assert!(joined == expected, "the pieces are the body");
        for b in &out {
            let kept = input
                .iter()
                .any(|i| i.as_ptr() == b.as_ptr() && i.len() == b.len());
            if b.len() >= Pieces::KEEP && input.iter().any(|i| i.as_ptr() == b.as_ptr()) {
                assert!(kept, "a large piece is kept whole");
            } else {
                assert!(!kept, "a small piece is copied ({} bytes)", b.len());
                assert!(b.len() <= Pieces::GATHER, "gathered {} bytes", b.len());
            }
        }
        let kept = out
            .iter()
            .filter(|b| b.len() >= Pieces::KEEP && input.iter().any(|i| i.as_ptr() == b.as_ptr()))
            .count();
        assert_eq!(kept, 3, "200 KiB, 130 KiB and KEEP bytes are kept");
        assert!(out.len() <= 9, "{} pieces: small ones gathered", out.len());
    }
}
