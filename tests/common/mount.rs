//! Mounting bucketfs for a test, and private Garage servers a test may kill.

use super::require_env;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `dir` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(dir: &Path) -> bool {
    mounts_at(dir) > 0
}

/// How many mounts are stacked on `dir`.
pub fn mounts_at(dir: &Path) -> usize {
    let dir = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(dir.as_str()))
        .count()
}

/// A bucketfs process in the foreground, unmounted and stopped on drop.
pub struct Mounted {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
    child: Option<Child>,
    log: PathBuf,
}

impl Mounted {
    /// Mounts `target` (BUCKET or BUCKET/PREFIX) with extra arguments and environment.
    pub fn new(target: &str, args: &[&str], env: &[(&str, &str)]) -> Mounted {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        Self::spawn(target, args, env, tmp, dir, &[])
    }

    /// Mounts `target` with the daemon in a PID namespace of its own (as
    /// in a container): the processes of this one are not in it, so FUSE
    /// reports their pid as 0.
    pub fn in_pid_namespace(target: &str) -> Mounted {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let wrap = ["unshare", "--pid", "--fork", "--kill-child"];
        Self::spawn(target, &[], &[], tmp, dir, &wrap)
    }

    /// Mounts `target` on an existing directory (which may hold a dead mount).
    pub fn at(target: &str, dir: &Path) -> Mounted {
        Self::at_with(target, dir, &[])
    }

    /// Mounts `target` on an existing directory with extra arguments.
    pub fn at_with(target: &str, dir: &Path, args: &[&str]) -> Mounted {
        Self::spawn(
            target,
            args,
            &[],
            tempfile::tempdir().unwrap(),
            dir.to_path_buf(),
            &[],
        )
    }

    fn spawn(
        target: &str,
        args: &[&str],
        env: &[(&str, &str)],
        tmp: tempfile::TempDir,
        dir: PathBuf,
        wrapper: &[&str],
    ) -> Mounted {
        let log = tmp.path().join("bucketfs.log");
        let bin = env!("CARGO_BIN_EXE_bucketfs");
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("mount")
            .arg(target)
            .arg(&dir)
            .arg("--foreground")
            .args(args)
            .env("BUCKETFS_LOG", "bucketfs=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        // Each mount keeps its journal in its own temporary directory unless
        // the test shares one between mounts (to test crash recovery).
        if !args.contains(&"--state-dir") {
            cmd.arg("--state-dir").arg(tmp.path().join("state"));
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn bucketfs mount");
        let deadline = Instant::now() + Duration::from_secs(20);
        // read_dir reaches the filesystem (stat may come from a dead mount's cache).
        while !(is_mounted(&dir) && std::fs::read_dir(&dir).is_ok()) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "bucketfs exited ({status}) before mounting:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "not mounted within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mounted {
            dir,
            _tmp: tmp,
            child: Some(child),
            log,
        }
    }

    /// Mounts a bucket of the shared test server with default options.
    pub fn bucket(bucket: &str) -> Mounted {
        Self::new(bucket, &[], &[])
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// The daemon's process ID (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Bytes the daemon has written with write(2)-like calls (sockets and
    /// /dev/fuse included), from /proc/PID/io.
    pub fn bytes_written(&self) -> u64 {
        let pid = self.pid().expect("daemon running");
        std::fs::read_to_string(format!("/proc/{pid}/io"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("wchar: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("wchar in /proc/PID/io")
    }

    /// Runs a command (a tool working in the mount) that must succeed;
    /// returns its standard output. A failure shows its stderr and this
    /// daemon's log.
    pub fn run(&self, cmd: &mut Command) -> String {
        let out = cmd.output().expect("run command");
        assert!(
            out.status.success(),
            "{:?}: {}\n{}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts and waits for the daemon to exit; returns its exit status.
    pub fn unmount(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
        let status = wait_exit(&mut child, Duration::from_secs(30));
        if status.is_none() {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        status
    }

    /// Sends SIGTERM and waits (up to `wait`) for the daemon to exit; its status.
    pub fn terminate(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: plain kill(2) on our child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        wait_exit(&mut child, wait)
    }

    /// Kills the daemon with SIGKILL (the mount is left dead).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits up to `wait` for `child` to exit; kills it after that (None).
fn wait_exit(child: &mut Child, wait: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.unmount();
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// A private Garage for tests that kill their server.
pub struct Garage {
    pub state: tempfile::TempDir,
    pub endpoint: String,
}

impl Garage {
    /// Starts a fresh server through scripts/garage.sh.
    pub fn start() -> Garage {
        let state = tempfile::tempdir().unwrap();
        let out = Command::new(require_env("BUCKETFS_GARAGE_SH"))
            .arg("start")
            .arg(state.path())
            .stderr(Stdio::inherit())
            .output()
            .expect("garage.sh start");
        assert!(out.status.success(), "garage.sh start failed");
        let env = String::from_utf8(out.stdout).unwrap();
        let endpoint = env
            .lines()
            .find_map(|l| l.strip_prefix("export AWS_ENDPOINT_URL="))
            .expect("endpoint in env")
            .to_string();
        Garage { state, endpoint }
    }

    fn pid(&self) -> i32 {
        std::fs::read_to_string(self.state.path().join("garage.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// SIGKILL: the server vanishes mid-request, its data stays on disk.
    pub fn kill(&self) {
        // SAFETY: plain kill(2) on the server's pid.
        unsafe {
            libc::kill(self.pid(), libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    /// Starts the killed server again on the same data and port.
    pub fn resume(&self) {
        let st = Command::new(require_env("BUCKETFS_GARAGE_SH"))
            .arg("resume")
            .arg(self.state.path())
            .status()
            .expect("garage.sh resume");
        assert!(st.success(), "garage.sh resume failed");
    }

    /// A client for this server.
    pub fn client(&self) -> bucketfs::s3::Client {
        client_at(&self.endpoint)
    }
}

/// A client like the shared test server's, talking to `endpoint`.
pub fn client_at(endpoint: &str) -> bucketfs::s3::Client {
    let mut cfg = super::client().config().clone();
    cfg.endpoint = bucketfs::s3::config::parse_endpoint(endpoint).unwrap();
    bucketfs::s3::Client::new(cfg).unwrap()
}

/// `garage.sh stop` of a server or cluster started in `state`.
fn stop_garage(state: &Path) {
    let _ = Command::new(require_env("BUCKETFS_GARAGE_SH"))
        .arg("stop")
        .arg(state)
        .status();
}

impl Drop for Garage {
    fn drop(&mut self) {
        stop_garage(self.state.path());
    }
}

/// A private Garage cluster of several nodes on loopback (replication factor
/// 3 from three nodes up, else one copy per node), for tests that kill and
/// resume nodes. Nodes are numbered from 1; `endpoints[i - 1]` is node i's S3
/// endpoint. Stopped on drop.
pub struct GarageCluster {
    pub state: tempfile::TempDir,
    pub endpoints: Vec<String>,
}

impl GarageCluster {
    /// Starts a fresh cluster of `n` nodes through `scripts/garage.sh
    /// start-cluster` (healthy, bucket `bucketfs-test` and the test key
    /// reachable through every node when it returns).
    pub fn start(n: usize) -> GarageCluster {
        let state = tempfile::tempdir().unwrap();
        let out = Command::new(require_env("BUCKETFS_GARAGE_SH"))
            .arg("start-cluster")
            .arg(state.path())
            .arg(n.to_string())
            .stderr(Stdio::inherit())
            .output()
            .expect("garage.sh start-cluster");
        assert!(out.status.success(), "garage.sh start-cluster failed");
        let env = String::from_utf8(out.stdout).unwrap();
        let endpoints: Vec<String> = env
            .lines()
            .find_map(|l| l.strip_prefix("export BUCKETFS_CLUSTER_ENDPOINTS="))
            .expect("BUCKETFS_CLUSTER_ENDPOINTS in env")
            .split(',')
            .map(str::to_string)
            .collect();
        assert_eq!(endpoints.len(), n, "one endpoint per node: {endpoints:?}");
        GarageCluster { state, endpoints }
    }

    /// Runs `garage.sh COMMAND STATE_DIR NODE`, which must succeed.
    fn node_command(&self, command: &str, i: usize) {
        assert!(
            (1..=self.endpoints.len()).contains(&i),
            "no node {i} in a cluster of {}",
            self.endpoints.len()
        );
        let st = Command::new(require_env("BUCKETFS_GARAGE_SH"))
            .arg(command)
            .arg(self.state.path())
            .arg(i.to_string())
            .status()
            .unwrap_or_else(|e| panic!("garage.sh {command}: {e}"));
        assert!(st.success(), "garage.sh {command} {i} failed");
    }

    /// SIGKILL node `i` (1-based): it vanishes mid-request, its data stays on disk.
    pub fn kill_node(&self, i: usize) {
        self.node_command("kill-node", i);
    }

    /// Starts node `i` again on its data and ports; returns once it serves
    /// S3 requests and is connected to the running nodes.
    pub fn resume_node(&self, i: usize) {
        self.node_command("resume-node", i);
    }

    /// Node `i`'s S3 endpoint (1-based).
    pub fn endpoint(&self, i: usize) -> &str {
        &self.endpoints[i - 1]
    }

    /// A client whose endpoint is node `i` (1-based).
    pub fn client(&self, i: usize) -> bucketfs::s3::Client {
        client_at(self.endpoint(i))
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        stop_garage(self.state.path());
    }
}
