//! Property tests on hostile input (stable Rust, proptest): arbitrary bytes into the frontend
//! framing, startup parsing, Parse/Bind decoding, the SQL classifier and the SCRAM exchange
//! never panic, never allocate past the declared limits, and end in an error or a clean result.
//! `PROPTEST_CASES=100000 cargo test --test fuzz` runs longer; CI runs the default count.

use proptest::prelude::*;

use pgsplit::config::AuthMethod;
use pgsplit::protocol::{self, FrameReader};
use tokio::io::AsyncWriteExt;

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => panic!("runtime: {e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512)
    ))]

    /// Any byte stream: frames come out whole or the reader says why; a declared length over
    /// the limit is refused before the body is buffered.
    #[test]
    fn framing_survives_anything(bytes in proptest::collection::vec(any::<u8>(), 0..4096), max in 1024usize..65536) {
        let rt = runtime();
        rt.block_on(async {
            let mut r = FrameReader::new(&bytes[..]).with_max(max);
            let mut seen = 0usize;
            loop {
                match r.next().await {
                    Ok(f) => {
                        prop_assert!(f.bytes.len() <= max + 1);
                        seen += f.bytes.len();
                    }
                    Err(_) => break,
                }
                // Buffer growth is bounded by what arrived, not by what a length claims.
                prop_assert!(r.buffered() <= bytes.len());
            }
            prop_assert!(seen <= bytes.len());
            Ok(())
        })?;
    }

    /// A huge declared length with no body: refused at once.
    #[test]
    fn oversized_declared_length_is_refused(tag in any::<u8>(), len in 70_000u32..u32::MAX) {
        let rt = runtime();
        let mut msg = vec![tag];
        msg.extend_from_slice(&len.to_be_bytes());
        let r = rt.block_on(async { FrameReader::new(&msg[..]).with_max(65536).next().await });
        prop_assert!(r.is_err());
    }

    /// Startup packets: parsed or refused, never a panic.
    #[test]
    fn startup_parsing_survives_anything(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = protocol::parse_startup(&bytes);
        let rt = runtime();
        let mut len = ((bytes.len() + 4) as u32).to_be_bytes().to_vec();
        len.extend_from_slice(&bytes);
        let _ = rt.block_on(async { protocol::read_startup(&mut &len[..]).await });
        // The buffered reader of plaintext logins: whole packets or an error, never more
        // than what arrived.
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        while let Ok(Some(body)) = protocol::take_startup(&mut buf) {
            prop_assert!(body.len() + 4 <= bytes.len());
        }
    }

    /// Statement text: classified without panicking, whatever it is.
    #[test]
    fn classifier_survives_anything(text in "\\PC{0,300}") {
        let a = pgsplit::sql::cache::Analysis::of(&text, 1 << 20);
        let _ = a.target;
        let _ = pgsplit::sql::lex::words(&text);
        let _ = pgsplit::sql::lex::rewrite_for_parser(&text);
    }

    /// SQL-looking text built from keywords and punctuation: the classifier never calls a
    /// statement with a write keyword a read.
    #[test]
    fn writes_are_never_reads(
        pre in proptest::sample::select(vec!["SELECT 1", "WITH x AS (SELECT 1)", "TABLE t", "VALUES (1)", "SELECT * FROM t"]),
        write in proptest::sample::select(vec!["INSERT INTO t VALUES (1)", "UPDATE t SET a = 1", "DELETE FROM t", "MERGE INTO t USING u ON true WHEN MATCHED THEN DELETE"]),
        // (", DELETE FROM t" would be a read: delete is an unreserved word, a column name.)
        glue in proptest::sample::select(vec![" ; ", " UNION ", " ) ", " ( ", " WHERE x IN ("]),
    ) {
        let sql = format!("{pre}{glue}{write}");
        let a = pgsplit::sql::cache::Analysis::of(&sql, 1 << 20);
        prop_assert_eq!(a.target, pgsplit::sql::Target::Primary, "{}", sql);
        let sql = format!("WITH w AS ({write} RETURNING *) {pre}");
        let a = pgsplit::sql::cache::Analysis::of(&sql, 1 << 20);
        prop_assert_eq!(a.target, pgsplit::sql::Target::Primary, "{}", sql);
    }

    /// The md5 and SCRAM exchanges fed arbitrary client messages (random bytes, or a
    /// SASLInitialResponse that starts right and goes wrong): refused or an error, never a
    /// panic, never a login.
    #[test]
    fn auth_exchanges_survive_anything(
        first in proptest::collection::vec(any::<u8>(), 0..300),
        second in proptest::collection::vec(any::<u8>(), 0..300),
        shaped in any::<bool>(),
        method in proptest::sample::select(vec![AuthMethod::Md5, AuthMethod::ScramSha256]),
        tls in any::<bool>(),
    ) {
        let first = if shaped {
            // mechanism, length, "n,,n=,r=" + the random bytes as the rest of client-first
            let mut b = b"SCRAM-SHA-256\0".to_vec();
            let rest = [b"n,,n=,r=".as_slice(), &first].concat();
            b.extend_from_slice(&(rest.len() as i32).to_be_bytes());
            b.extend_from_slice(&rest);
            b
        } else {
            first
        };
        let mut input = Vec::new();
        for body in [&first, &second] {
            input.push(b'p');
            input.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            input.extend_from_slice(body);
        }
        let rt = runtime();
        let r = rt.block_on(async {
            let (server, client) = tokio::io::duplex(1 << 16);
            let (sr, mut sw) = tokio::io::split(server);
            let (_cr, mut cw) = tokio::io::split(client);
            let _ = cw.write_all(&input).await;
            let _ = cw.shutdown().await;
            let mut reader = FrameReader::new(sr);
            let secret = pgsplit::auth::Secret::parse("pw");
            let end_point: Option<&[u8]> = if tls { Some(&[7u8; 32]) } else { None };
            pgsplit::auth::authenticate(method, "u", Some(&secret), &mut reader, &mut sw, end_point).await
        });
        prop_assert!(r.is_err(), "arbitrary bytes logged in");
    }

    /// Stored secrets: any string parses to something, never a panic.
    #[test]
    fn secrets_parse(text in "\\PC{0,200}") {
        let _ = pgsplit::auth::Secret::parse(&text);
        let _ = pgsplit::auth::Secret::parse(&format!("SCRAM-SHA-256${text}"));
    }
}
