//! The Lua scripts, one `.lua` file each under `lua/`, read at compile time. Every script
//! starts with `now.lua` (the server's clock); those that grant or renew continue with
//! `guard.lua` (the restart guard). Each script is assembled once, when the store is made.

use redis::Script;

const NOW: &str = include_str!("lua/now.lua");
const GUARD: &str = include_str!("lua/guard.lua");

/// Every script of the store, ready to invoke (`EVALSHA`, loaded on first use).
#[derive(Clone)]
pub(super) struct Scripts {
    pub(super) init: Script,
    /// The renew script's source, for `SCRIPT LOAD` before a batch of `EVALSHA`s.
    pub(super) renew_source: String,
    pub(super) acquire: Script,
    pub(super) release: Script,
    pub(super) renew: Script,
    pub(super) inspect: Script,
    pub(super) cleanup: Script,
    pub(super) force: Script,
    pub(super) announce: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let s = |body: &str| Script::new(&format!("{NOW}{body}"));
        let guarded = |body: &str| Script::new(&format!("{NOW}{GUARD}{body}"));
        Self {
            init: guarded(include_str!("lua/init.lua")),
            renew_source: format!("{NOW}{GUARD}{}", include_str!("lua/renew.lua")),
            acquire: guarded(include_str!("lua/acquire.lua")),
            release: s(include_str!("lua/release.lua")),
            renew: guarded(include_str!("lua/renew.lua")),
            inspect: s(include_str!("lua/inspect.lua")),
            cleanup: s(include_str!("lua/cleanup.lua")),
            force: s(include_str!("lua/force.lua")),
            announce: s(include_str!("lua/announce.lua")),
        }
    }
}
