//! `SessionStore::append` on every store: one message per row, idempotent by id, fenced,
//! versioned against `save`, and readable alongside sessions written before messages had
//! rows of their own.

use std::sync::Arc;

use conc_session::{MemorySessionStore, Message, Role, SessionData, SessionError, SessionStore};

fn message(id: &str) -> Message {
    Message::new(id, Role::User, format!("text of {id}"))
}

fn ids(session: &SessionData) -> Vec<&str> {
    session.messages.iter().map(|m| m.id.as_str()).collect()
}

async fn appends_are_rows(store: Arc<dyn SessionStore>) {
    assert!(matches!(
        store.append("missing", &message("m"), None).await,
        Err(SessionError::NotFound(_))
    ));
    let mut start = SessionData::new("s");
    start.messages = vec![message("m-1"), message("m-2")];
    store.create(&start).await.unwrap();
    let appended = store.append("s", &message("m-3"), None).await.unwrap();
    assert!(appended.added);
    assert_eq!(appended.version, 1);
    let session = store.load("s").await.unwrap().unwrap();
    assert_eq!(ids(&session), ["m-1", "m-2", "m-3"]);
    assert_eq!(session.version, 1);
    assert_eq!(
        session.messages[2],
        message_like(&session.messages[2], "m-3")
    );

    // A retried append is kept once; nothing changes.
    let again = store.append("s", &message("m-3"), None).await.unwrap();
    assert!(!again.added);
    assert_eq!(again.version, 1);
    assert!(
        !store
            .append("s", &message("m-1"), None)
            .await
            .unwrap()
            .added
    );

    // Fenced: recorded with the append; an older fence is refused and writes nothing.
    let fenced = store.append("s", &message("m-4"), Some(10)).await.unwrap();
    assert_eq!((fenced.added, fenced.fence, fenced.version), (true, 10, 2));
    assert!(matches!(
        store.append("s", &message("m-5"), Some(5)).await,
        Err(SessionError::StaleFence {
            fence: 5,
            seen: 10,
            ..
        })
    ));
    let session = store.load("s").await.unwrap().unwrap();
    assert_eq!(ids(&session), ["m-1", "m-2", "m-3", "m-4"]);
    assert_eq!(session.fence, 10);

    // An append moves the version: a save of an older copy is a conflict.
    let mut old = session.clone();
    store.append("s", &message("m-6"), None).await.unwrap();
    old.metadata.insert("title".into(), "late".into());
    assert!(matches!(
        store.save(&old).await,
        Err(SessionError::Conflict { .. })
    ));
    // A save of the latest copy rewrites the messages; appends go on after them.
    let mut latest = store.load("s").await.unwrap().unwrap();
    latest.messages.remove(0);
    latest.metadata.insert("title".into(), "edited".into());
    let saved = store.save(&latest).await.unwrap();
    assert_eq!(saved.version, latest.version + 1);
    assert!(
        store
            .append("s", &message("m-7"), None)
            .await
            .unwrap()
            .added
    );
    let session = store.load("s").await.unwrap().unwrap();
    assert_eq!(ids(&session), ["m-2", "m-3", "m-4", "m-6", "m-7"]);
    assert_eq!(session.metadata["title"], "edited");
    // The removed message's id is free again.
    assert!(
        store
            .append("s", &message("m-1"), None)
            .await
            .unwrap()
            .added
    );
}

/// The stored copy of `expected_id`, compared field by field with what was appended.
fn message_like(stored: &Message, expected_id: &str) -> Message {
    Message {
        id: expected_id.to_owned(),
        role: Role::User,
        content: format!("text of {expected_id}"),
        created_at_ms: stored.created_at_ms,
        fence: None,
    }
}

#[tokio::test]
async fn memory_appends() {
    appends_are_rows(Arc::new(MemorySessionStore::new())).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_appends_and_reads_older_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.db");
    let store = Arc::new(conc_session::SqliteSessionStore::open(&path).await.unwrap());
    appends_are_rows(store.clone()).await;
    // A session written before messages had rows: its messages are in its JSON.
    let legacy = SessionData {
        messages: vec![message("old-1"), message("old-2")],
        ..SessionData::new("legacy")
    };
    let connection = rusqlite::Connection::open(&path).unwrap();
    connection
        .execute(
            "INSERT INTO conc_sessions (id, version, data) VALUES ('legacy', 3, ?1)",
            [serde_json::to_string(&legacy).unwrap()],
        )
        .unwrap();
    legacy_rows(store).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_appends_and_reads_older_rows() {
    let Ok(url) = std::env::var("CONC_TEST_POSTGRES_URL") else {
        println!(
            "skipped: CONC_TEST_POSTGRES_URL is not set, so the PostgreSQL session store is not tested"
        );
        return;
    };
    let schema = format!("conc_append_{}", std::process::id());
    let store = Arc::new(
        conc_session::PostgresSessionStore::connect(&url, &schema)
            .await
            .unwrap(),
    );
    appends_are_rows(store.clone()).await;
    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let legacy = SessionData {
        messages: vec![message("old-1"), message("old-2")],
        ..SessionData::new("legacy")
    };
    admin
        .execute(
            &format!(
                "INSERT INTO \"{schema}\".conc_sessions (id, version, data) VALUES ('legacy', 3, $1)"
            ),
            &[&serde_json::to_string(&legacy).unwrap()],
        )
        .await
        .unwrap();
    legacy_rows(store).await;
    admin
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await
        .unwrap();
}

/// A session row from before message rows: read as it was, appended to after its
/// messages (an id among them counts as present), and converted by the next save.
async fn legacy_rows(store: Arc<dyn SessionStore>) {
    let session = store.load("legacy").await.unwrap().unwrap();
    assert_eq!(ids(&session), ["old-1", "old-2"]);
    assert!(
        !store
            .append("legacy", &message("old-2"), None)
            .await
            .unwrap()
            .added
    );
    let appended = store
        .append("legacy", &message("new-1"), None)
        .await
        .unwrap();
    assert!(appended.added);
    assert_eq!(appended.version, 4);
    let session = store.load("legacy").await.unwrap().unwrap();
    assert_eq!(ids(&session), ["old-1", "old-2", "new-1"]);
    let saved = store.save(&session).await.unwrap();
    assert_eq!(saved.version, 5);
    assert!(
        store
            .append("legacy", &message("new-2"), None)
            .await
            .unwrap()
            .added
    );
    let session = store.load("legacy").await.unwrap().unwrap();
    assert_eq!(ids(&session), ["old-1", "old-2", "new-1", "new-2"]);
}

/// A store failure keeps the driver's error as its source, for logging chains and
/// downcasting.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_store_error_keeps_the_driver_error_as_its_source() {
    let dir = tempfile::tempdir().unwrap();
    // A folder is not a database file.
    let error = conc_session::SqliteSessionStore::open(dir.path())
        .await
        .unwrap_err();
    assert!(matches!(error, SessionError::Store { .. }), "{error}");
    let source = std::error::Error::source(&error).expect("the driver's error");
    assert!(
        source.downcast_ref::<rusqlite::Error>().is_some(),
        "{source:?}"
    );
}
