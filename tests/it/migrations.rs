//! Schema migrations carry existing rows over: a database filled by the
//! schema before the provider contract is migrated and read back through
//! the store (cursors, sealed credentials and webhook secrets, settings).

use crmsync::domain::{ConnectionId, CrmId, CrmObject, Cursor, TenantId, WebhookCredentialKind};
use crmsync::secrets::{EncryptionKey, KeyRing};
use crmsync::store::{Credentials, Store, WebhookCredential};
use secrecy::{ExposeSecret, SecretString};
use sqlx::Connection;
use sqlx::migrate::Migrator;
use sqlx::types::Json;

/// The provider contract's migration (`migrations/*/20261209000001_…`).
const CONTRACT: i64 = 20261209000001;

/// The migrations before `version`.
fn before(all: &Migrator, version: i64) -> Migrator {
    let migrations: Vec<_> = all
        .migrations
        .iter()
        .filter(|m| m.version < version)
        .cloned()
        .collect();
    assert!(
        all.iter().any(|m| m.version == version) && migrations.len() < all.migrations.len(),
        "the contract's migration is among the shipped ones"
    );
    Migrator {
        migrations: migrations.into(),
        ..Migrator::DEFAULT
    }
}

/// What the previous schema held, as the previous code wrote it.
struct Filled {
    tenant: TenantId,
    connection: ConnectionId,
    ring: KeyRing,
    cursor_at: chrono::DateTime<chrono::Utc>,
}

impl Filled {
    fn new() -> Self {
        let key = EncryptionKey::generate().expect("key");
        Self {
            tenant: TenantId::new(),
            connection: ConnectionId::new(),
            ring: KeyRing::single(EncryptionKey::parse(&key).expect("key")),
            cursor_at: chrono::DateTime::from_timestamp_millis(1_765_000_000_123)
                .unwrap_or_default(),
        }
    }

    /// Sealed as the store seals them (the row binding is the storage
    /// format: rows sealed before a release must open after it).
    fn sealed_credentials(&self) -> Vec<u8> {
        let plain = br#"{"type":"private_app_token","token":"pat-na1-kept"}"#;
        let binding = format!("crmsync:connection:{}:{}", self.tenant, self.connection);
        self.ring.seal(plain, binding.as_bytes()).expect("seal")
    }

    fn sealed_webhook_secret(&self) -> Vec<u8> {
        let binding = format!("crmsync:webhook-secret:{}:{}", self.tenant, self.connection);
        self.ring
            .seal(b"private-app-secret", binding.as_bytes())
            .expect("seal")
    }

    /// Runs the contract's migration on `url` and checks every row.
    async fn migrate_and_check(&self, url: &str) {
        Store::migrate(url).await.expect("the contract's migration");
        let store = Store::open(url, 2, Some(self.ring.clone()))
            .await
            .expect("store");
        self.check(&store).await;
        store.close().await;
    }

    /// Checks every row through the migrated store.
    async fn check(&self, store: &Store) {
        let row = store
            .connection(self.tenant, self.connection)
            .await
            .expect("the connection reads back");
        assert_eq!(row.external_account_id, "62515");
        assert_eq!(row.settings.objects.len(), 1);
        assert_eq!(row.instance_url, None);
        assert_eq!(row.provider_state, serde_json::json!({}));
        match store.credentials(&row).expect("credentials open") {
            Credentials::PrivateAppToken { token } => {
                assert_eq!(token.expose_secret(), "pat-na1-kept")
            }
            other => panic!("credentials changed kind: {other:?}"),
        }
        assert!(row.has_webhook_secret());
        assert_eq!(
            row.sealed_webhook_credential().map(|(kind, _)| kind),
            Some(WebhookCredentialKind::HmacSecret)
        );
        match store.webhook_credential(&row).expect("secret opens") {
            Some(WebhookCredential::HmacSecret(secret)) => {
                assert_eq!(secret.expose_secret(), "private-app-secret")
            }
            other => panic!("the webhook secret did not carry over: {other:?}"),
        }
        let cursor = store
            .cursor(self.tenant, self.connection, CrmObject::Contacts)
            .await
            .expect("cursor");
        assert_eq!(
            cursor,
            Some(Cursor::at(self.cursor_at, CrmId("1234".into()))),
            "the cursor carries over on the `changes` feed, without a position"
        );
        // The migrated table takes a position, keyed by feed.
        store
            .set_webhook_credential(
                self.tenant,
                self.connection,
                Some(&WebhookCredential::Basic {
                    user: "crmsync".into(),
                    password: SecretString::from("basic-password"),
                }),
            )
            .await
            .expect("a tagged credential is stored");
        let row = store
            .connection(self.tenant, self.connection)
            .await
            .expect("connection");
        assert!(
            !row.has_webhook_secret(),
            "Basic credentials are no HMAC secret"
        );
        match store.webhook_credential(&row).expect("opens") {
            Some(WebhookCredential::Basic { user, password }) => {
                assert_eq!(
                    (user.as_str(), password.expose_secret()),
                    ("crmsync", "basic-password")
                )
            }
            other => panic!("{other:?}"),
        }
    }
}

macro_rules! fill {
    ($conn:expr, $filled:expr) => {{
        let f = $filled;
        let now = chrono::Utc::now();
        sqlx::query("INSERT INTO tenants (id, name, api_token_hash, allow_duplicates, created_at) VALUES ($1, 'acme', $2, false, $3)")
            .bind(f.tenant.0)
            .bind(vec![7u8; 32])
            .bind(now)
            .execute(&mut *$conn)
            .await
            .expect("tenant");
        sqlx::query(
            "INSERT INTO connections (id, tenant_id, provider, external_account_id, credentials, settings, status, delta_interval_secs, created_at, updated_at, webhook_secret)
             VALUES ($1, $2, 'hubspot', '62515', $3, $4, 'active', 60, $5, $5, $6)",
        )
        .bind(f.connection.0)
        .bind(f.tenant.0)
        .bind(f.sealed_credentials())
        .bind(Json(serde_json::json!({"objects": [{"crmObject": "contacts", "recordKind": "lead"}], "strategy": "newest_wins"})))
        .bind(now)
        .bind(f.sealed_webhook_secret())
        .execute(&mut *$conn)
        .await
        .expect("connection");
        sqlx::query("INSERT INTO sync_cursors (tenant_id, connection_id, crm_object, modified_at, crm_id, updated_at) VALUES ($1, $2, 'contacts', $3, '1234', $4)")
            .bind(f.tenant.0)
            .bind(f.connection.0)
            .bind(f.cursor_at)
            .bind(now)
            .execute(&mut *$conn)
            .await
            .expect("cursor");
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_of_the_previous_schema_carries_over() {
    let admin = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let name = format!("crmsync_it_{}", uuid::Uuid::now_v7().simple());
    let mut server = sqlx::PgConnection::connect(&admin).await.expect("admin");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut server)
        .await
        .expect("create database");
    let url = crate::fleet::with_database(&admin, &name, None);
    let filled = Filled::new();
    {
        let mut conn = sqlx::PgConnection::connect(&url).await.expect("owner");
        before(&crmsync::store::POSTGRES_MIGRATIONS, CONTRACT)
            .run(&mut conn)
            .await
            .expect("the previous schema");
        fill!(&mut conn, &filled);
        conn.close().await.ok();
    }
    filled.migrate_and_check(&url).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut server)
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_of_the_previous_schema_carries_over() {
    let dir = std::env::temp_dir().join(format!("crmsync-it-migrate-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let url = format!("sqlite://{}", dir.join("crmsync.db").display());
    let filled = Filled::new();
    {
        let pool = crmsync::store::open_sqlite(&url, 1).await.expect("sqlite");
        before(&crmsync::store::SQLITE_MIGRATIONS, CONTRACT)
            .run(&pool)
            .await
            .expect("the previous schema");
        let mut conn = pool.acquire().await.expect("connection");
        fill!(&mut *conn, &filled);
        drop(conn);
        pool.close().await;
    }
    filled.migrate_and_check(&url).await;
    let _ = std::fs::remove_dir_all(&dir);
}
