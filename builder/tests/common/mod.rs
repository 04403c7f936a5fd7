//! What the builder's tests share: a source tree in a temp dir, a build with its output
//! collected, running a built image on the engine and asking it over HTTP, and cleaning up
//! every image and container a test made (the stack image stays: it is a cache).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flynn_builder::{Build, BuildError, Built, Options};

/// A test's app: its tree, its build cache, and what it made (removed on drop).
pub struct App {
    pub name: String,
    pub source: tempfile::TempDir,
    pub cache: tempfile::TempDir,
    pub env: BTreeMap<String, String>,
    images: Vec<String>,
    containers: Vec<String>,
}

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl App {
    /// An app named `t-<kind>-<pid>-<n>` with `files` (path, contents; `bin/*` executable).
    pub fn new(kind: &str, files: &[(&str, &str)]) -> App {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let app = App {
            name: format!("t-{kind}-{}-{n}", std::process::id()),
            source: tempfile::tempdir().expect("source dir"),
            cache: tempfile::tempdir().expect("cache dir"),
            env: BTreeMap::new(),
            images: Vec::new(),
            containers: Vec::new(),
        };
        app.write(files);
        app
    }

    pub fn write(&self, files: &[(&str, &str)]) {
        write_tree(self.source.path(), files);
    }

    /// Builds the app as build `build_id`: the result and every line of output.
    pub async fn build(&mut self, build_id: &str) -> (Result<Built, BuildError>, Vec<String>) {
        self.build_with(build_id, &Options::default()).await
    }

    /// [`App::build`] with `options`.
    pub async fn build_with(
        &mut self,
        build_id: &str,
        options: &Options,
    ) -> (Result<Built, BuildError>, Vec<String>) {
        let build = Build {
            app_id: format!("id-{}", self.name),
            app_name: self.name.clone(),
            build_id: build_id.to_owned(),
            source: self.source.path().to_owned(),
            env: self.env.clone(),
            cache_dir: self.cache.path().join("cache"),
            docker: None,
        };
        self.images
            .push(flynn_builder::image_tag(&self.name, build_id).expect("tag"));
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let started = Instant::now();
        let collect = tokio::spawn(async move {
            let mut lines = Vec::new();
            while let Some(line) = rx.recv().await {
                println!("|{:6.1}s {line}", started.elapsed().as_secs_f64());
                lines.push(line);
            }
            lines
        });
        let result = flynn_builder::build(&build, options, &tx).await;
        drop(tx);
        let lines = collect.await.expect("collector");
        (result, lines)
    }

    /// Removes `image` (a tag) with the app's other images when the app goes.
    pub fn owns_image(&mut self, image: &str) {
        self.images.push(image.to_owned());
    }

    /// Runs `image` with `argv` (the host agent's way: argv[0] the entrypoint, the rest its
    /// arguments; empty: the image's own) and PORT=`port` published on 127.0.0.1; returns
    /// the body of `GET /` once it answers.
    pub async fn serve(&mut self, image: &str, argv: &[String], port: u16) -> String {
        let name = format!("{}-run-{}", self.name, self.containers.len());
        let mut cmd = Command::new("docker");
        cmd.args([
            "run",
            "-d",
            "--init",
            "--name",
            &name,
            "--label",
            "flynn.test=builder",
        ])
        .args(["-e", &format!("PORT={port}")])
        .args(["-p", &format!("127.0.0.1::{port}")]);
        if let Some((first, rest)) = argv.split_first() {
            cmd.args(["--entrypoint", first]).arg(image).args(rest);
        } else {
            cmd.arg(image);
        }
        let run = cmd.output().expect("docker run");
        assert!(
            run.status.success(),
            "docker run: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        self.containers.push(name.clone());
        let port_out = docker(&["port", &name, &format!("{port}/tcp")]);
        let addr = port_out
            .lines()
            .next()
            .expect("a published port")
            .trim()
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let curl = tokio::process::Command::new("curl")
                .args(["-sf", "--max-time", "2", &format!("http://{addr}/")])
                .output()
                .await
                .expect("curl");
            if curl.status.success() {
                return String::from_utf8_lossy(&curl.stdout).into_owned();
            }
            if Instant::now() > deadline {
                let logs = Command::new("docker")
                    .args(["logs", &name])
                    .output()
                    .expect("logs");
                panic!(
                    "{image} did not answer on {addr}: {}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs a one-off command line in `image` through its runner and returns its stdout.
    pub fn run_once(&self, image: &str, command: &str) -> String {
        docker(&[
            "run",
            "--rm",
            "--init",
            "--label",
            "flynn.test=builder",
            "--entrypoint",
            "/runner/init",
            image,
            command,
        ])
    }
}

impl Drop for App {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", "-v", c]).output();
        }
        for i in &self.images {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
        // The dependency layers its images sat on (`flynn/app-<name>:deps-…`).
        let deps = Command::new("docker")
            .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .args(["--filter", &format!("reference=flynn/app-{}", self.name)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for tag in deps.lines() {
            let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
        }
        // The build cache holds files of the build user: root removes them.
    }
}

pub fn write_tree(root: &Path, files: &[(&str, &str)]) {
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
        if path
            .parent()
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "bin")
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
}

/// `docker ARGS`, which must succeed; its stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().expect("docker");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether the engine has `image`.
pub fn image_exists(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .output()
        .expect("docker")
        .status
        .success()
}

/// The builder's containers (running or not) of build `build_id`: `flynn-build-<id>` and
/// `flynn-assemble-…-<id>`.
pub fn build_containers(build_id: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--filter", &format!("name={build_id}")])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A unique build id.
pub fn build_id(tag: &str) -> String {
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("b{}-{tag}-{n}", std::process::id())
}

/// A tiny HTTP server in Python answering `GET /` with `text` on $PORT.
pub fn python_server(text_expr: &str) -> String {
    format!(
        "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n\
         class H(BaseHTTPRequestHandler):\n    def do_GET(self):\n        body = ({text_expr}).encode()\n        \
         self.send_response(200)\n        self.send_header('Content-Length', str(len(body)))\n        \
         self.end_headers()\n        self.wfile.write(body)\n\
         HTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()\n"
    )
}
