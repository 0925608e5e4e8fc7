//! `conc locks`: list, inspect, release, clean up and purge locks, for the people on call.

use std::time::{Duration, SystemTime};

use conc_lock_store::{LockInfo, LockRequest, LockStore, StoreKind};
use serde_json::json;

/// How long ago `time` was (zero if in the future), and how long until it (zero if past).
fn age(time: SystemTime) -> Duration {
    SystemTime::now().duration_since(time).unwrap_or_default()
}

fn left(time: SystemTime) -> Duration {
    time.duration_since(SystemTime::now()).unwrap_or_default()
}

/// `1.2s`, `3m04s`, `2h05m`: short, for a table.
fn short(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, secs % 3600 / 60)
    }
}

fn to_json(info: &LockInfo) -> serde_json::Value {
    json!({
        "key": info.key,
        "owner": info.owner,
        "fence": info.fence,
        "acquired_at": humantime::format_rfc3339_millis(info.acquired_at).to_string(),
        "expires_at": humantime::format_rfc3339_millis(info.expires_at).to_string(),
        "age_ms": age(info.acquired_at).as_millis() as u64,
        "left_ms": left(info.expires_at).as_millis() as u64,
        "metadata": info.metadata,
    })
}

/// An aligned table of leases.
pub(crate) fn table(infos: &[LockInfo]) -> String {
    let rows: Vec<[String; 7]> = infos
        .iter()
        .map(|i| {
            let metadata: Vec<String> =
                i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [
                i.key.clone(),
                i.owner.clone(),
                i.fence.to_string(),
                humantime::format_rfc3339_millis(i.acquired_at).to_string(),
                short(age(i.acquired_at)),
                short(left(i.expires_at)),
                metadata.join(","),
            ]
        })
        .collect();
    let header = [
        "KEY", "OWNER", "FENCE", "ACQUIRED", "AGE", "LEFT", "METADATA",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 7]| {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        cells.join("  ").trim_end().to_owned()
    };
    let mut out = line(&header);
    for row in &rows {
        out.push('\n');
        out.push_str(&line(row));
    }
    out
}

pub(crate) async fn list(
    store: &dyn LockStore,
    prefix: &str,
    limit: usize,
    as_json: bool,
) -> Result<String, String> {
    // One more than asked, to tell whether the limit cut the list.
    let mut infos = store
        .list(prefix, limit.saturating_add(1))
        .await
        .map_err(|e| e.to_string())?;
    let cut = infos.len() > limit;
    infos.truncate(limit);
    Ok(if as_json {
        json!({
            "locks": infos.iter().map(to_json).collect::<Vec<_>>(),
            "truncated": cut,
        })
        .to_string()
    } else if infos.is_empty() {
        format!("no live locks under `{prefix}`")
    } else if cut {
        format!(
            "{}\n(only the first {limit}: more live locks match; raise --limit to see them)",
            table(&infos)
        )
    } else {
        table(&infos)
    })
}

pub(crate) async fn inspect(
    store: &dyn LockStore,
    key: &str,
    as_json: bool,
) -> Result<String, String> {
    match store.inspect(key).await.map_err(|e| e.to_string())? {
        Some(info) if as_json => Ok(to_json(&info).to_string()),
        Some(info) => Ok(table(&[info])),
        None if as_json => Ok("null".into()),
        None => Ok(format!("`{key}` is not locked")),
    }
}

pub(crate) async fn release(
    store: &dyn LockStore,
    key: &str,
    as_json: bool,
) -> Result<String, String> {
    let holder = store.inspect(key).await.map_err(|e| e.to_string())?;
    let Some(holder) = holder else {
        return Ok(if as_json {
            json!({ "key": key, "released": false }).to_string()
        } else {
            format!("`{key}` was not locked")
        });
    };
    // A take-over, then a release: the lock is free, and the take-over's fence is newer
    // than the holder's, so a resource that checks fences refuses the holder from now on.
    let request = LockRequest::new(key, "conc-locks-release", Duration::from_secs(5))
        .with_metadata("released_from", holder.owner.clone());
    let taken = store.take_over(&request).await.map_err(|e| e.to_string())?;
    store.release(&taken).await.map_err(|e| e.to_string())?;
    Ok(if as_json {
        json!({
            "key": key,
            "released": true,
            "holder": holder.owner,
            "holder_fence": holder.fence,
            "new_fence": taken.fence,
        })
        .to_string()
    } else {
        format!(
            "released `{key}` (held by `{}`, fence {}); new fence {}: writes with an older fence are refused by a resource that checks fences. The holder keeps running until it notices (at once where the store notifies, else at its next renewal).",
            holder.owner, holder.fence, taken.fence
        )
    })
}

/// The store spec a purge opens: `spec` with `prefix` as its key prefix (Redis, etcd);
/// refused on the default namespace unless `force`.
pub(crate) fn purge_spec(spec: &str, prefix: Option<&str>, force: bool) -> Result<String, String> {
    let parsed = conc_lock_store::parse_url(spec).map_err(|e| e.to_string())?;
    let kind = parsed.kind;
    let spec = match prefix {
        None => spec.to_owned(),
        Some(prefix) if matches!(kind, StoreKind::Redis | StoreKind::Etcd) => {
            let separator = if spec.contains('?') { '&' } else { '?' };
            format!("{spec}{separator}prefix={prefix}")
        }
        Some(_) => {
            return Err(
                "--prefix names a Redis or etcd key prefix; on PostgreSQL name the namespace with schema= in the URL, and a SQLite file is its own".into(),
            );
        }
    };
    let parsed = conc_lock_store::parse_url(&spec).map_err(|e| e.to_string())?;
    let default = match kind {
        StoreKind::Redis | StoreKind::Etcd => parsed.option("prefix").is_none(),
        StoreKind::Postgres => parsed.option("schema").is_none(),
        _ => false,
    };
    if default && !force {
        return Err(
            "this is the default namespace, which every service without a prefix (or schema) of its own shares: name yours with --prefix (Redis, etcd) or schema= (PostgreSQL), or add --force if you mean all of it".into(),
        );
    }
    Ok(spec)
}

pub(crate) async fn purge(
    store: &dyn LockStore,
    force: bool,
    as_json: bool,
) -> Result<String, String> {
    let removed = store.purge(force).await.map_err(|e| e.to_string())?;
    Ok(if as_json {
        json!({ "removed": removed }).to_string()
    } else {
        format!("purged: removed {removed} record(s)")
    })
}

pub(crate) async fn cleanup(store: &dyn LockStore, as_json: bool) -> Result<String, String> {
    let removed = store.cleanup_expired().await.map_err(|e| e.to_string())?;
    Ok(if as_json {
        json!({ "removed": removed }).to_string()
    } else {
        format!("removed {removed} expired lock(s)")
    })
}
