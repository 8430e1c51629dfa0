//! `config/nginx-cluster.conf` as committed, in a real nginx in front of two nodes: only
//! the two upstream `server` lines and the `listen` line are replaced. nginx runs in its
//! own directory and process group; dropping the guard stops and reaps it (also when a
//! test panics). Without nginx the test fails and names `scripts/setup.sh`.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::free_port;
use crate::common::WAIT;

const SITE_CONF: &str = include_str!("../../config/nginx-cluster.conf");
const UPSTREAM_LINES: [&str; 2] = [
    "server 127.0.0.1:8081 max_fails=1 fail_timeout=5s;",
    "server 127.0.0.1:8082 max_fails=1 fail_timeout=5s;",
];
const LISTEN_LINE: &str = "listen 80;";
const STOP_GRACE: Duration = Duration::from_secs(5);

pub struct Nginx {
    child: Option<Child>,
    dir: PathBuf,
    port: u16,
}

impl Nginx {
    /// Start nginx in front of `nodes` and wait until `/hearken/ready` answers 200.
    pub async fn start(nodes: [SocketAddr; 2]) -> Nginx {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "hearken-nginx-cluster-{}-{port}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create nginx directory");
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir, nodes, port)).expect("write nginx.conf");
        let mut command = Command::new(nginx_binary());
        command
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let child = command
            .spawn()
            .expect("run nginx (scripts/setup.sh installs it)");
        let nginx = Nginx {
            child: Some(child),
            dir,
            port,
        };
        let deadline = Instant::now() + WAIT;
        let ready = nginx.http("/ready");
        while Instant::now() < deadline {
            if reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) {
                return nginx;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("nginx did not come up: {}", nginx.error_log());
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/hearken{path}", self.port)
    }

    pub fn ws(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/hearken/v1/ws?{query}", self.port)
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as i32;
            // SAFETY: kill(2) on our own child (SIGTERM: nginx's fast shutdown).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    let _ = std::fs::remove_dir_all(&self.dir);
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            // SAFETY: kill(2) on the process group created for nginx, not yet reaped.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx_binary() -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nginx"))
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|path| path.is_file())
        .expect("nginx is not installed: run scripts/setup.sh (Debian package `nginx`)")
}

fn nginx_conf(dir: &Path, nodes: [SocketAddr; 2], port: u16) -> String {
    let mut site = SITE_CONF.to_string();
    for (line, node) in UPSTREAM_LINES.iter().zip(nodes) {
        site = replace_once(
            &site,
            line,
            &format!("server {node} max_fails=1 fail_timeout=5s;"),
        );
    }
    let site = replace_once(&site, LISTEN_LINE, &format!("listen 127.0.0.1:{port};"));
    let dir = dir.display();
    format!(
        "daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

{site}
}}
"
    )
}

fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "config/nginx-cluster.conf must contain `{from}` exactly once"
    );
    text.replacen(from, to, 1)
}
