//! [`PrivateEtcdCluster`]: an etcd cluster of a test's own.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TempDir, free_port};

/// One member: its ports, name and process.
#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// An etcd cluster of the test's own: `members` members of Debian's `etcd` on free
/// loopback ports, data in a temporary folder, a 50 ms heartbeat and a 500 ms election
/// timeout (so a new leader is elected within a second or two of the old one's loss).
/// Every member is stopped by its PID on drop.
#[derive(Debug)]
pub struct PrivateEtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    dir: TempDir,
}

impl PrivateEtcdCluster {
    /// Starts the members and waits until they have elected a leader. `Ok(None)`, after
    /// printing a `skipped:` line, when `etcd` or `etcdctl` is not installed.
    pub fn start(members: usize) -> Result<Option<Self>, String> {
        for tool in ["etcd", "etcdctl"] {
            if Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
            {
                println!(
                    "skipped: {tool} is not installed (Debian: etcd-server, etcd-client), so no private etcd cluster can be started"
                );
                return Ok(None);
            }
        }
        let port = |what| free_port().map_err(|e| format!("no free port for {what}: {e}"));
        let mut list = Vec::new();
        for n in 0..members {
            list.push(Member {
                name: format!("m{n}"),
                client_port: port("a client")?,
                peer_port: port("a peer")?,
                child: None,
            });
        }
        let initial_cluster = list
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let dir = std::env::temp_dir().join(format!(
            "conc-etcd-{}-{}",
            std::process::id(),
            list.first().map_or(0, |m| m.client_port)
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {dir:?}: {e}"))?;
        let mut cluster = Self {
            members: list,
            initial_cluster,
            token: format!(
                "conc-{}-{}",
                std::process::id(),
                crate::util::random::next_u64()
            ),
            dir: TempDir(dir),
        };
        for index in 0..members {
            cluster.launch(index)?;
        }
        cluster.wait_until_healthy(Duration::from_secs(30))?;
        Ok(Some(cluster))
    }

    fn launch(&mut self, index: usize) -> Result<(), String> {
        let data = self.dir.0.join(format!("m{index}"));
        let member = self.members.get_mut(index).ok_or("no such member")?;
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let child = Command::new("etcd")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start etcd: {e}"))?;
        member.child = Some(child);
        Ok(())
    }

    /// Its URL: `etcd://` and every member.
    pub fn url(&self) -> String {
        let members: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client_port))
            .collect();
        format!("etcd://{}", members.join(","))
    }

    /// Each member's client URL (`http://127.0.0.1:PORT`), for `etcd_client::Client`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client_port))
            .collect()
    }

    /// The `etcd://` URL of member `index` alone.
    pub fn member_url(&self, index: usize) -> String {
        format!(
            "etcd://127.0.0.1:{}",
            self.members.get(index).map_or(0, |m| m.client_port)
        )
    }

    /// The PID of member `index`, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.members.get(index)?.child.as_ref().map(Child::id)
    }

    /// `etcdctl endpoint status` of member `index`: (its member id, the leader it knows),
    /// or `None` if it does not answer within 2 s or knows no leader.
    fn status(&self, index: usize) -> Option<(u64, u64)> {
        let member = self.members.get(index)?;
        member.child.as_ref()?;
        let output = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!(
                "--endpoints=http://127.0.0.1:{}",
                member.client_port
            ))
            .args(["--dial-timeout=1s", "--command-timeout=2s"])
            .args(["endpoint", "status", "-w", "json"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&output.stdout);
        let number = |field: &str| -> Option<u64> {
            let at = text.find(&format!("\"{field}\":"))? + field.len() + 3;
            let digits: String = text[at..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        };
        let leader = number("leader")?;
        (leader != 0).then_some((number("member_id")?, leader))
    }

    /// The index of the member that leads now, as every running member reports it.
    pub fn leader(&self) -> Result<usize, String> {
        let mut ids = Vec::new();
        let mut leader = None;
        for index in 0..self.members.len() {
            if self.members[index].child.is_none() {
                continue;
            }
            let (id, known) = self
                .status(index)
                .ok_or_else(|| format!("member {index} knows no leader"))?;
            if leader.is_some_and(|l| l != known) {
                return Err("the members name different leaders".into());
            }
            leader = Some(known);
            ids.push((index, id));
        }
        let leader = leader.ok_or("no member runs")?;
        ids.iter()
            .find(|(_, id)| *id == leader)
            .map(|(index, _)| *index)
            .ok_or_else(|| "the leader is not among the running members".into())
    }

    /// Waits until every running member reports the same leader, itself running.
    pub fn wait_until_healthy(&self, limit: Duration) -> Result<usize, String> {
        let deadline = Instant::now() + limit;
        loop {
            match self.leader() {
                Ok(leader) => return Ok(leader),
                Err(e) if Instant::now() > deadline => {
                    return Err(format!(
                        "the private etcd cluster was not healthy within {limit:?}: {e}"
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// Kills member `index` (SIGKILL: a crash).
    pub fn kill(&mut self, index: usize) {
        if let Some(member) = self.members.get_mut(index)
            && let Some(mut child) = member.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `index` again with its data: it rejoins the cluster.
    pub fn restart(&mut self, index: usize) -> Result<(), String> {
        self.kill(index);
        self.launch(index)
    }
}

impl Drop for PrivateEtcdCluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }
}
