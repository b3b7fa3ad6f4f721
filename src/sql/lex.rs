//! A small SQL lexer: enough to split a multi-statement string, find routing hints in leading
//! comments, and read the first keywords of session commands (SET, BEGIN, ...), whose grammar is
//! simple and whose tracking must never depend on a full parser accepting the statement.

/// Splits on top-level semicolons, honouring quotes, dollar quotes and comments. Empty
/// statements (only whitespace or comments) are dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b';' => {
                push_nonempty(&mut out, &sql[start..i]);
                start = i + 1;
                i += 1;
            }
            _ => i = skip_token(b, i),
        }
    }
    push_nonempty(&mut out, &sql[start..]);
    out
}

fn push_nonempty<'a>(out: &mut Vec<&'a str>, s: &'a str) {
    let t = s.trim();
    if !t.is_empty() && !strip_leading_comments(t).is_empty() {
        out.push(t);
    }
}

/// Skips one lexical unit starting at `i` (a quoted string, a comment, or one byte) and returns
/// the index after it. Unterminated constructs run to the end of input.
fn skip_token(b: &[u8], i: usize) -> usize {
    match b[i] {
        b'\'' => skip_quoted(b, i, b'\'', i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e')),
        b'"' => skip_quoted(b, i, b'"', false),
        b'-' if b.get(i + 1) == Some(&b'-') => {
            let mut j = i + 2;
            while j < b.len() && b[j] != b'\n' {
                j += 1;
            }
            j
        }
        b'/' if b.get(i + 1) == Some(&b'*') => skip_block_comment(b, i),
        b'$' => skip_dollar(b, i),
        _ => i + 1,
    }
}

fn skip_quoted(b: &[u8], i: usize, q: u8, backslash: bool) -> usize {
    let mut j = i + 1;
    while j < b.len() {
        if backslash && b[j] == b'\\' {
            j += 2;
            continue;
        }
        if b[j] == q {
            if b.get(j + 1) == Some(&q) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    b.len()
}

/// The text between a quote at `start` and its closing quote just before `end` (or the end of
/// input when unterminated). Quotes are ASCII, so these are always character boundaries.
fn quoted_content(s: &str, start: usize, end: usize) -> &str {
    let b = s.as_bytes();
    let close = if end > start + 1 && b.get(end - 1) == b.get(start) { end - 1 } else { end };
    s.get(start + 1..close.max(start + 1)).unwrap_or("")
}

fn skip_block_comment(b: &[u8], i: usize) -> usize {
    // Block comments nest in PostgreSQL.
    let mut depth = 0;
    let mut j = i;
    while j < b.len() {
        if b[j] == b'/' && b.get(j + 1) == Some(&b'*') {
            depth += 1;
            j += 2;
        } else if b[j] == b'*' && b.get(j + 1) == Some(&b'/') {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    b.len()
}

fn skip_dollar(b: &[u8], i: usize) -> usize {
    // $tag$ ... $tag$ where tag is empty or an identifier not starting with a digit. A `$1`
    // parameter is not a dollar quote.
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
        j += 1;
    }
    if j >= b.len() || b[j] != b'$' || (j > i + 1 && b[i + 1].is_ascii_digit()) {
        return i + 1;
    }
    let tag = &b[i..=j];
    let mut k = j + 1;
    while k + tag.len() <= b.len() {
        if &b[k..k + tag.len()] == tag {
            return k + tag.len();
        }
        k += 1;
    }
    b.len()
}

/// The text with every literal (numbers, quoted and dollar-quoted strings) replaced by `?` and
/// comments dropped (but for pgsplit hints): statements that differ only in their values share a
/// cache entry. Written into `out`, which is cleared first.
pub fn normalize_into(sql: &str, out: &mut String) {
    out.clear();
    let b = sql.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let prev_ident = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_' || b[i - 1] == b'$');
        let end = match c {
            b'\'' | b'$' => skip_token(b, i),
            b'-' if b.get(i + 1) == Some(&b'-') => skip_token(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => skip_token(b, i),
            b'0'..=b'9' if !prev_ident => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.') {
                    j += 1;
                }
                j
            }
            _ => i + 1,
        };
        if end == i + 1 && !(c == b'$' || c.is_ascii_digit() && !prev_ident || c == b'\'') {
            out.push(c as char);
            i = end;
            continue;
        }
        let token = &sql[i..end];
        if c == b'$' && end == i + 1 {
            out.push('$'); // a $1 parameter
        } else if token.starts_with("--") || token.starts_with("/*") {
            if token.contains("pgsplit:") {
                out.push_str(token);
            }
            out.push(' ');
        } else {
            out.push('?');
        }
        i = end;
    }
}

/// The statement with leading whitespace and comments removed.
pub fn strip_leading_comments(s: &str) -> &str {
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b[i..].starts_with(b"--") || b[i..].starts_with(b"/*") {
            i = skip_token(b, i);
        } else {
            return &s[i..];
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hint {
    Primary,
    Replica,
}

/// A routing hint in a comment before the first keyword: `/* pgsplit:primary */` or
/// `-- pgsplit:replica`.
pub fn leading_hint(sql: &str) -> Option<Hint> {
    let b = sql.as_bytes();
    let mut i = 0;
    let mut hint = None;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if b[i..].starts_with(b"--") || b[i..].starts_with(b"/*") {
            let end = skip_token(b, i);
            let comment = &sql[i..end];
            if comment.contains("pgsplit:primary") {
                hint = Some(Hint::Primary);
            } else if comment.contains("pgsplit:replica") {
                hint = Some(Hint::Replica);
            }
            i = end;
        } else {
            return hint;
        }
    }
}

/// A read-your-writes floor in a leading comment: `/* pgsplit:min_lsn=0/16B3748 */`.
pub fn leading_min_lsn(sql: &str) -> Option<crate::lsn::Lsn> {
    let b = sql.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if !(b[i..].starts_with(b"--") || b[i..].starts_with(b"/*")) {
            return None;
        }
        let end = skip_token(b, i);
        if let Some(at) = sql[i..end].find("pgsplit:min_lsn=") {
            let rest = &sql[i + at + "pgsplit:min_lsn=".len()..end];
            let lsn: String = rest.chars().take_while(|c| c.is_ascii_hexdigit() || *c == '/').collect();
            return crate::lsn::Lsn::parse(&lsn);
        }
        i = end;
    }
}

/// Lower-cased words of the statement, up to `n`, skipping comments. Quoted strings end the
/// scan (session commands never need words past their first value).
pub fn keywords(stmt: &str, n: usize) -> Vec<String> {
    let s = strip_leading_comments(stmt);
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() && out.len() < n {
        let c = b[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.' || b[i] == b'$') {
                i += 1;
            }
            out.push(s[st..i].to_ascii_lowercase());
        } else if c == b'"' {
            let end = skip_quoted(b, i, b'"', false);
            out.push(quoted_content(s, i, end).replace("\"\"", "\""));
            i = end;
        } else if c == b'=' {
            out.push("=".into());
            i += 1;
        } else if c == b'\''
            || c == b'$'
            || c == b'-' && b.get(i + 1) == Some(&b'-')
            || c == b'/' && b.get(i + 1) == Some(&b'*')
        {
            break;
        } else {
            i += 1;
        }
    }
    out
}

/// One word of a statement, for the word-by-word check of reads the parser cannot read:
/// lower-cased unless quoted, schema-qualified names joined with '.', `call` when an opening
/// parenthesis follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub quoted: bool,
    pub call: bool,
}

/// The words of `stmt`, skipping literals, comments, parameters, numbers and operators.
pub fn words(stmt: &str) -> Vec<Word> {
    let b = stmt.as_bytes();
    let mut out: Vec<Word> = Vec::new();
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 || c == b'"' {
            // A possibly qualified name: part(.part)*
            let mut text = String::new();
            let mut quoted = false;
            loop {
                if i < b.len() && b[i] == b'"' {
                    let end = skip_quoted(b, i, b'"', false);
                    text.push_str(&quoted_content(stmt, i, end).replace("\"\"", "\""));
                    quoted = true;
                    i = end;
                } else {
                    let st = i;
                    while i < b.len() && ident(b[i]) {
                        i += 1;
                    }
                    text.push_str(&stmt[st..i].to_ascii_lowercase());
                }
                let more = i + 1 < b.len()
                    && b[i] == b'.'
                    && (b[i + 1].is_ascii_alphabetic() || b[i + 1] == b'_' || b[i + 1] == b'"' || b[i + 1] >= 0x80);
                if !more {
                    break;
                }
                text.push('.');
                i += 1;
            }
            // E'..', B'..', X'..', N'..': a literal with a prefix, not a word.
            if !quoted && i < b.len() && b[i] == b'\'' && matches!(text.as_str(), "e" | "b" | "x" | "n") {
                continue;
            }
            let mut j = i;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let call = j < b.len() && b[j] == b'(';
            out.push(Word { text, quoted, call });
            continue;
        }
        i = match c {
            b'0'..=b'9' => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.' || b[j] == b'_') {
                    j += 1;
                }
                j
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                let mut j = i + 1;
                while j < b.len() && b[j].is_ascii_digit() {
                    j += 1;
                }
                j
            }
            _ => skip_token(b, i),
        };
    }
    out
}

/// `TABLE name ...` (the shorthand for `SELECT * FROM name ...`, anywhere a query may stand)
/// and a trailing `FOR READ ONLY` rewritten into forms sqlparser reads. None when there is
/// nothing to rewrite.
pub fn rewrite_for_parser(stmt: &str) -> Option<String> {
    let b = stmt.as_bytes();
    let mut out = String::with_capacity(stmt.len() + 16);
    let mut changed = false;
    let mut i = 0;
    let mut prev_word = String::new();
    let mut last = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_alphabetic() || c == b'_' {
            let st = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'$') {
                i += 1;
            }
            let w = stmt[st..i].to_ascii_lowercase();
            let after_dot = st > 0 && b[st - 1] == b'.';
            if w == "table" && !after_dot && !matches!(prev_word.as_str(), "into" | "lock" | "create" | "alter") {
                out.push_str(&stmt[last..st]);
                out.push_str("SELECT * FROM");
                last = i;
                changed = true;
            } else if w == "for" && !after_dot {
                let rest = &stmt[i..];
                let kw = keywords(rest, 2);
                if kw.len() == 2 && kw[0] == "read" && kw[1] == "only" {
                    // Skip "read only" too.
                    let lower = rest.to_ascii_lowercase();
                    if let Some(pos) = lower.find("only") {
                        out.push_str(&stmt[last..st]);
                        i += pos + 4;
                        last = i;
                        changed = true;
                    }
                }
            }
            prev_word = w;
            continue;
        }
        i = skip_token(b, i);
    }
    if !changed {
        return None;
    }
    out.push_str(&stmt[last..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_respecting_quotes_and_comments() {
        let s = "select ';' ; insert into t values ($$a;b$$); -- c;\n/* x; /* y; */ */ select 1;;";
        assert_eq!(
            split_statements(s),
            vec!["select ';'", "insert into t values ($$a;b$$)", "-- c;\n/* x; /* y; */ */ select 1"]
        );
        assert_eq!(split_statements("  ;  ; -- only a comment"), Vec::<&str>::new());
        assert_eq!(split_statements("select $1; select E'\\';'"), vec!["select $1", "select E'\\';'"]);
        assert_eq!(split_statements("select $tag$ $x$ ; $tag$"), vec!["select $tag$ $x$ ; $tag$"]);
    }

    #[test]
    fn normalization() {
        let mut out = String::new();
        normalize_into("SELECT abalance FROM t WHERE aid = 12345 AND x = 'a''b' AND y = $1 /* trace=9 */", &mut out);
        assert_eq!(out, "SELECT abalance FROM t WHERE aid = ? AND x = ? AND y = $1  ");
        normalize_into("select t1.c2, 1.5e3, $$x$$ /* pgsplit:primary */", &mut out);
        assert_eq!(out, "select t1.c2, ?, ? /* pgsplit:primary */ ");
    }

    #[test]
    fn hints() {
        assert_eq!(leading_hint("/* pgsplit:primary */ select 1"), Some(Hint::Primary));
        assert_eq!(leading_hint("-- pgsplit:replica\nselect 1"), Some(Hint::Replica));
        assert_eq!(leading_hint("select 1 /* pgsplit:replica */"), None);
        assert_eq!(leading_hint("/* app=x */ select 1"), None);
        assert_eq!(leading_min_lsn("/* pgsplit:min_lsn=0/16B3748 */ select 1"), Some(crate::lsn::Lsn(0x16B3748)));
        assert_eq!(leading_min_lsn("-- pgsplit:min_lsn=1/0\nselect 1"), Some(crate::lsn::Lsn(1 << 32)));
        assert_eq!(leading_min_lsn("select 1 /* pgsplit:min_lsn=0/1 */"), None);
    }

    #[test]
    fn keyword_scan() {
        assert_eq!(keywords("/* c */ SET  Search_Path = 'x'", 5), vec!["set", "search_path", "="]);
        assert_eq!(keywords("set \"TimeZone\" to 'UTC'", 5), vec!["set", "TimeZone", "to"]);
        assert_eq!(keywords("BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY", 9).len(), 6);
    }

    #[test]
    fn word_scan() {
        let w = words("SELECT a.b, \"X\".f(1), E'x(' , 'y' FROM public.t WHERE c = $1 AND d > 1.5e3 -- z(\n");
        let texts: Vec<(&str, bool)> = w.iter().map(|w| (w.text.as_str(), w.call)).collect();
        assert_eq!(
            texts,
            vec![
                ("select", false),
                ("a.b", false),
                ("X.f", true),
                ("from", false),
                ("public.t", false),
                ("where", false),
                ("c", false),
                ("and", false),
                ("d", false)
            ]
        );
        assert!(w[2].quoted);
    }

    #[test]
    fn rewrites() {
        assert_eq!(
            rewrite_for_parser("TABLE t ORDER BY 1 LIMIT 2").as_deref(),
            Some("SELECT * FROM t ORDER BY 1 LIMIT 2")
        );
        assert_eq!(
            rewrite_for_parser("with x as (table t) select * from x union table u").as_deref(),
            Some("with x as (SELECT * FROM t) select * from x union SELECT * FROM u")
        );
        assert_eq!(rewrite_for_parser("SELECT * FROM t FOR READ ONLY").as_deref(), Some("SELECT * FROM t "));
        assert_eq!(rewrite_for_parser("SELECT * INTO TABLE t2 FROM t"), None);
        assert_eq!(rewrite_for_parser("SELECT 'table' FROM t FOR UPDATE"), None);
        assert_eq!(rewrite_for_parser("SELECT x.table FROM t"), None);
    }
}
