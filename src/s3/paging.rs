//! Following a listing's pages, safely: a server that loops (repeats a
//! token, cycles through a few, or hands out ever-new tokens over the same
//! entries) is an error after a bounded number of pages, never a hang.
//!
//! The guard is S3's own order: keys and common prefixes come in ascending
//! order across pages, so every page must start after the previous page's
//! last entry (or repeat it, as some servers do with a common prefix) and
//! end past it, and a truncated page must hold an entry. A listing of a
//! million entries (a thousand pages) passes; a loop fails on its second
//! lap at the latest.

use super::error::S3Error;
use super::types::ListPage;
use std::future::Future;

/// The first and last entry of a page (object keys and common prefixes).
fn span(p: &ListPage) -> Option<(&str, &str)> {
    let entries = || {
        p.objects
            .iter()
            .map(|o| o.key.as_str())
            .chain(p.common_prefixes.iter().map(String::as_str))
    };
    Some((entries().min()?, entries().max()?))
}

/// Fetches every page of a listing: `fetch(token)` asks for one, `each`
/// takes it. `operation` names the listing in the error.
pub async fn each_page<F, Fut, E>(
    operation: &'static str,
    mut fetch: F,
    mut each: impl FnMut(ListPage) -> Result<(), E>,
) -> Result<(), E>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = Result<ListPage, S3Error>>,
    E: From<S3Error>,
{
    let mut token: Option<String> = None;
    let mut after: Option<String> = None;
    loop {
        let page = fetch(token.take()).await?;
        let next = page.next_token.clone();
        match (span(&page), &after) {
            // A common prefix may be repeated across a page boundary; the
            // page must still go past where the previous one ended.
            (Some((first, last)), Some(prev)) if first < prev.as_str() || last <= prev.as_str() => {
                return Err(S3Error::malformed(
                    operation,
                    format!("a page runs {first:?}..{last:?}, not past the previous page's last entry {prev:?}: the server is looping"),
                )
                .into())
            }
            (None, _) if next.is_some() => {
                return Err(S3Error::malformed(
                    operation,
                    "a truncated page with no entry: the server is looping",
                )
                .into())
            }
            (Some((_, last)), _) => after = Some(last.to_string()),
            (None, _) => {}
        }
        each(page)?;
        match next {
            Some(t) => token = Some(t),
            None => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::s3::types::ObjectEntry;

    fn page(keys: &[&str], prefixes: &[&str], next: Option<&str>) -> ListPage {
        ListPage {
            objects: keys
                .iter()
                .map(|k| ObjectEntry {
                    key: k.to_string(),
                    size: 0,
                    etag: String::new(),
                    last_modified: None,
                    storage_class: None,
                })
                .collect(),
            common_prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            next_token: next.map(str::to_string),
        }
    }

    async fn run(pages: Vec<ListPage>) -> (Result<(), S3Error>, usize) {
        let mut fetched = 0;
        let mut pages = pages.into_iter().cycle();
        let mut seen = 0;
        let r = each_page(
            "test",
            |_| {
                fetched += 1;
                assert!(fetched < 100, "no end");
                std::future::ready(Ok(pages.next().unwrap()))
            },
            |_| {
                seen += 1;
                Ok::<_, S3Error>(())
            },
        )
        .await;
        (r, seen)
    }

    #[tokio::test]
    async fn pages_in_order_are_followed_to_the_end() {
        let (r, seen) = run(vec![
            page(&["a", "b"], &["c/"], Some("t1")),
            page(&["d"], &["e/"], Some("t2")),
            page(&[], &[], None),
        ])
        .await;
        r.unwrap();
        assert_eq!(seen, 3);
        // A common prefix repeated across the boundary is no loop.
        let (r, _) = run(vec![
            page(&["a"], &["b/"], Some("t1")),
            page(&["c"], &["b/"], None),
        ])
        .await;
        r.unwrap();
        // A page holding only that repeat makes no progress.
        let (r, _) = run(vec![
            page(&["a"], &["b/"], Some("t1")),
            page(&[], &["b/"], Some("t2")),
        ])
        .await;
        assert!(r.is_err());
    }

    /// Tokens A, B, A over the same two pages; ever-new tokens over one
    /// page; a truncated empty page: each an error, not a loop.
    #[tokio::test]
    async fn a_looping_server_is_an_error() {
        let cycle = vec![page(&["a"], &[], Some("A")), page(&["b"], &[], Some("B"))];
        let (r, seen) = run(cycle).await;
        assert!(r.unwrap_err().to_string().contains("looping"));
        assert_eq!(seen, 2);
        let (r, _) = run(vec![page(&["a", "b"], &[], Some("new"))]).await;
        assert!(r.is_err());
        let (r, _) = run(vec![page(&[], &[], Some("x"))]).await;
        assert!(r.is_err());
    }
}
