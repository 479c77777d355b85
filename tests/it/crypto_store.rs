//! matrix-sdk-crypto's own conformance suite for crypto stores, run against the SQL crypto store
//! on each backend. Its `get_store(name, passphrase, clear)` gives the named test's store:
//! emptied when `clear`, else as the test left it (a reopened store must hold what was saved).
#![allow(clippy::disallowed_types, unexpected_cfgs)]

use mxbridge::{Store, crypto::SqlCryptoStore};

/// A test's name as part of a file or schema name.
fn checked(name: &str) -> &str {
    assert!(
        !name.is_empty()
            && name.len() <= 50
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "unexpected store name {name:?}"
    );
    name
}

mod sqlite {
    use super::*;

    async fn get_store(name: &str, _passphrase: Option<&str>, clear: bool) -> SqlCryptoStore {
        let dir = std::env::temp_dir()
            .join(format!("mxbridge-crypto-conformance-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{}.db", checked(name)));
        if clear {
            for suffix in ["", "-wal", "-shm"] {
                let mut path = file.clone().into_os_string();
                path.push(suffix);
                let _ = std::fs::remove_file(path);
            }
        }
        let store = Store::connect_url(&format!("sqlite://{}", file.display())).await.unwrap();
        SqlCryptoStore::new(store)
    }

    matrix_sdk_crypto::cryptostore_integration_tests!();
    matrix_sdk_crypto::cryptostore_integration_tests_time!();
}

mod postgres {
    use super::*;

    /// Each test's store is a schema of its own, `tcs_` and the test's name, made afresh when
    /// the test asks for a cleared store (so a run leaves at most one per test, never tables in
    /// `public`). The suite needs PostgreSQL: it fails without it.
    async fn get_store(name: &str, _passphrase: Option<&str>, clear: bool) -> SqlCryptoStore {
        let url = crate::common::postgres_url()
            .expect("the PostgreSQL crypto store suite needs MXBRIDGE_TEST_POSTGRES");
        let schema = format!("tcs_{}", checked(name));
        let admin = sqlx::PgPool::connect(&url).await.unwrap();
        if clear {
            let drop = format!("DROP SCHEMA IF EXISTS {schema} CASCADE");
            sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await.unwrap();
        }
        let create = format!("CREATE SCHEMA IF NOT EXISTS {schema}");
        sqlx::query(sqlx::AssertSqlSafe(create)).execute(&admin).await.unwrap();
        admin.close().await;
        let sep = if url.contains('?') { '&' } else { '?' };
        let store =
            Store::connect_url(&format!("{url}{sep}options[search_path]={schema}")).await.unwrap();
        SqlCryptoStore::new(store)
    }

    matrix_sdk_crypto::cryptostore_integration_tests!();
    matrix_sdk_crypto::cryptostore_integration_tests_time!();
}
