//! The conformance suite on the memory backend.

use std::sync::Arc;

use conc_lock_store::{MemoryLockStore, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    conformance::run_all(Arc::new(MemoryLockStore::new()), "memory").await;
}
