//! The one way flannel-rs prints an error. Every error type names only itself in its
//! Display and chains its cause through `source()`; printing walks that chain once, so a
//! message is never repeated and never loses the root cause (a reqwest error's Display, for
//! one, leaves "connection refused" to its source).

use std::error::Error;
use std::fmt;

/// An error and its causes on one line: `outer: cause: root`. A cause whose text the line
/// already ends with (a transparent wrapper) is not repeated.
pub fn report(e: &(dyn Error + 'static)) -> String {
    Report(e).to_string()
}

/// [`report`] as a Display value, for log fields: `error = %Report(&e)`.
pub struct Report<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.0.to_string();
        let mut cur = self.0.source();
        while let Some(c) = cur {
            let text = c.to_string();
            if !text.is_empty() && !out.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cur = c.source();
        }
        f.write_str(&out)
    }
}

/// `text` with the user and password of every URL in it replaced by `<redacted>`
/// (`http://user:pass@host:2379` → `http://<redacted>@host:2379`), for anything that may be
/// logged or shown: a URL's userinfo is a credential.
pub fn redact_urls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") || !text.contains('@') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(['/', '?', '#', ',', ' ', '"', '\'', ';'])
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("<redacted>");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_userinfo_is_redacted_everywhere_in_a_text() {
        assert_eq!(
            redact_urls("http://user:password@host:2379/x,https://a:b@c/"),
            "http://<redacted>@host:2379/x,https://<redacted>@c/"
        );
        assert_eq!(
            redact_urls("endpoint \"http://u:p@h\" is bad"),
            "endpoint \"http://<redacted>@h\" is bad"
        );
        assert_eq!(redact_urls("http://host:2379"), "http://host:2379");
        assert_eq!(redact_urls("mail me@host"), "mail me@host");
        assert_eq!(redact_urls("http://h/path@x"), "http://h/path@x");
    }

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for E {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn each_cause_once_in_order() {
        let e = E(
            "create route 10.244.3.0/24 in rtb-1",
            Some(Box::new(E(
                "request failed",
                Some(Box::new(E("connection refused", None))),
            ))),
        );
        assert_eq!(
            report(&e),
            "create route 10.244.3.0/24 in rtb-1: request failed: connection refused"
        );
    }

    #[test]
    fn a_transparent_wrapper_and_an_empty_cause_are_not_repeated() {
        let e = E(
            "out of subnets",
            Some(Box::new(E("", Some(Box::new(E("out of subnets", None)))))),
        );
        assert_eq!(report(&e), "out of subnets");
        assert_eq!(format!("{}", Report(&e)), "out of subnets");
    }
}
