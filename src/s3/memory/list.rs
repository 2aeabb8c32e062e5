//! ListObjectsV2: pages, common prefixes and continuation tokens.

use super::{lock, service, MemoryStore};
use crate::s3::error::S3Error;
use crate::s3::etag::hex;
use crate::s3::rules::MAX_KEYS;
use crate::s3::types::*;
use std::ops::Bound;

/// A ListObjectsV2 continuation token: where the previous page stopped.
pub(super) enum Resume {
    /// After this object key.
    Key(String),
    /// After this common prefix and every key under it.
    Prefix(String),
}

pub(super) fn encode_token(r: &Resume) -> String {
    match r {
        Resume::Key(k) => format!("k{}", hex(k.as_bytes())),
        Resume::Prefix(p) => format!("p{}", hex(p.as_bytes())),
    }
}

pub(super) fn decode_token(t: &str) -> Option<Resume> {
    let (kind, rest) = (t.get(..1)?, t.get(1..)?);
    if rest.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..rest.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(rest.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    let s = String::from_utf8(bytes).ok()?;
    match kind {
        "k" => Some(Resume::Key(s)),
        "p" => Some(Resume::Prefix(s)),
        _ => None,
    }
}

impl MemoryStore {
    pub(super) fn do_list(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        token: Option<&str>,
        max_keys: Option<u32>,
    ) -> Result<ListPage, S3Error> {
        let resume = match token {
            None => None,
            Some(t) => Some(decode_token(t).ok_or_else(|| {
                service(
                    400,
                    "InvalidArgument",
                    "The continuation token provided is incorrect",
                )
            })?),
        };
        let max = max_keys.unwrap_or(MAX_KEYS).min(MAX_KEYS) as usize;
        let mut page = ListPage::default();
        if max == 0 {
            return Ok(page);
        }
        let delimiter = delimiter.filter(|d| !d.is_empty());
        let (after, skip_under) = match &resume {
            None => (None, None),
            Some(Resume::Key(k)) => (Some(k.as_str()), None),
            Some(Resume::Prefix(p)) => (Some(p.as_str()), Some(p.as_str())),
        };
        // Keys under `prefix` are contiguous from `prefix` on, so start at the
        // later of `prefix` and the resume point and stop at the first key
        // outside the prefix.
        let lower = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let d = lock(&self.data);
        let mut count = 0usize;
        let mut last: Option<Resume> = None;
        let mut truncated = false;
        for (key, o) in d.objects.range::<str, _>((lower, Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            if skip_under.is_some_and(|p| key.starts_with(p)) {
                continue;
            }
            let rolled = delimiter.and_then(|delim| {
                key[prefix.len()..]
                    .find(delim)
                    .map(|i| key[..prefix.len() + i + delim.len()].to_string())
            });
            if let (Some(cp), Some(Resume::Prefix(prev))) = (&rolled, &last) {
                if cp == prev {
                    continue;
                }
            }
            if count == max {
                truncated = true;
                break;
            }
            count += 1;
            match rolled {
                Some(cp) => {
                    page.common_prefixes.push(cp.clone());
                    last = Some(Resume::Prefix(cp));
                }
                None => {
                    page.objects.push(ObjectEntry {
                        key: key.clone(),
                        size: o.body.len() as u64,
                        etag: o.etag.clone(),
                        last_modified: Some(o.last_modified),
                        storage_class: Some(
                            o.storage_class
                                .clone()
                                .unwrap_or_else(|| "STANDARD".to_string()),
                        ),
                    });
                    last = Some(Resume::Key(key.clone()));
                }
            }
        }
        if truncated {
            page.next_token = last.as_ref().map(encode_token);
        }
        Ok(page)
    }
}
