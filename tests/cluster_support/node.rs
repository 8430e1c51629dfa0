//! A hearken node as a child process (the built `hearken` binary), configured through
//! `HEARKEN__*` variables, so a test can kill it with SIGKILL like a crashed machine.
//! Dropping it kills and reaps it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis_server::free_port;

pub struct NodeProcess {
    child: Child,
    pub port: u16,
}

impl NodeProcess {
    pub fn start(redis_url: &str, name: &str) -> NodeProcess {
        let port = free_port();
        let models = format!("{}/models", env!("CARGO_MANIFEST_DIR"));
        let child = Command::new(env!("CARGO_BIN_EXE_hearken"))
            .args(["serve", "--config", "config/default.toml"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("HEARKEN__SERVER__PORT", port.to_string())
            .env("HEARKEN__SERVER__WORKERS", "1")
            .env("HEARKEN__MODELS__DIR", models)
            .env("HEARKEN__VAD__ENGINE", "webrtc")
            .env("HEARKEN__STT__ENABLED", "false")
            .env("HEARKEN__TTS__ENABLED", "false")
            .env("HEARKEN__LLM__BACKEND", "none")
            .env("HEARKEN__CLUSTER__REDIS_URL", redis_url)
            .env("HEARKEN__CLUSTER__NODE_NAME", name)
            .env(
                "HEARKEN__CLUSTER__HEARTBEAT_MS",
                super::HEARTBEAT_MS.to_string(),
            )
            .env(
                "HEARKEN__CLUSTER__NODE_TTL_MS",
                super::NODE_TTL_MS.to_string(),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the hearken binary");
        let node = NodeProcess { child, port };
        node.wait_ready();
        node
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://127.0.0.1:{}/v1/ws?{query}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://127.0.0.1:{}/ready", self.port);
        while Instant::now() < deadline {
            if let Ok(response) = http::get_ok(&url) {
                if response {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("hearken node on port {} did not become ready", self.port);
    }

    /// SIGKILL: no teardown, no shutdown, no leaving the cluster.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

mod http {
    /// A blocking GET without a blocking HTTP client: a plain HTTP/1.0 request over TCP.
    /// True when the answer is 200.
    pub fn get_ok(url: &str) -> std::io::Result<bool> {
        use std::io::{Read, Write};
        let rest = url.trim_start_matches("http://");
        let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
        let mut stream = std::net::TcpStream::connect(host)?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        write!(stream, "GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"))
    }
}
