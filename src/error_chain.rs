//! One line for a whole error chain. tonic's and the SDKs' top-level messages ("transport
//! error", "dispatch failure") say too little, and our own messages already quote their
//! cause: each link is added only when its text is not already on the line.

/// `outer: cause: root cause`, without repeating a link whose text is already there.
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cur = e.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cur = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{0}")]
    struct Link(String, #[source] Option<Box<Link>>);

    #[test]
    fn links_already_quoted_are_not_repeated() {
        let root = Link("connection refused".into(), None);
        let mid = Link("transport error".into(), Some(Box::new(root)));
        let top = Link(
            "cannot reach etcd: transport error".into(),
            Some(Box::new(mid)),
        );
        assert_eq!(
            one_line(&top),
            "cannot reach etcd: transport error: connection refused"
        );
    }
}
