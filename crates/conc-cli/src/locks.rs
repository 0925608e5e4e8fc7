//! `conc locks`: list, inspect, release and clean up locks, for the people on call.

use conc_lock_store::{LockInfo, LockStore, format_time};
use serde_json::json;

fn to_json(info: &LockInfo) -> serde_json::Value {
    json!({
        "key": info.key,
        "owner": info.owner,
        "fence": info.fence,
        "acquired_at": format_time(info.acquired_at),
        "expires_at": format_time(info.expires_at),
        "metadata": info.metadata,
    })
}

/// An aligned table of leases.
pub(crate) fn table(infos: &[LockInfo]) -> String {
    let rows: Vec<[String; 6]> = infos
        .iter()
        .map(|i| {
            let metadata: Vec<String> =
                i.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [
                i.key.clone(),
                i.owner.clone(),
                i.fence.to_string(),
                format_time(i.acquired_at),
                format_time(i.expires_at),
                metadata.join(","),
            ]
        })
        .collect();
    let header = ["KEY", "OWNER", "FENCE", "ACQUIRED", "EXPIRES", "METADATA"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 6]| {
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
    let infos = store.list(prefix, limit).await.map_err(|e| e.to_string())?;
    Ok(if as_json {
        serde_json::Value::Array(infos.iter().map(to_json).collect()).to_string()
    } else if infos.is_empty() {
        format!("no live locks under `{prefix}`")
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
    let released = store.force_release(key).await.map_err(|e| e.to_string())?;
    Ok(if as_json {
        json!({ "key": key, "released": released }).to_string()
    } else if released {
        format!(
            "released `{key}`; its holder learns at once (or, where the store cannot notify, at its next renewal)"
        )
    } else {
        format!("`{key}` was not locked")
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
