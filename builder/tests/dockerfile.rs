//! Dockerfile builds through the engine's build API: FROM the stack image, the EXPOSEd port,
//! a missing base image, a failing step.

mod common;

use std::time::Instant;

use common::{build_id, image_exists, python_server, App};
use flynn_builder::{stack, BuildError};

/// The stack image exists (built on the first need): Dockerfile apps build FROM it.
async fn stack_image() -> String {
    let image = stack::default_image();
    let docker = flynn_builder::connect(None).expect("docker");
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let print = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            println!("| {line}");
        }
    });
    stack::ensure(&docker, &image, true, &tx)
        .await
        .expect("the stack image");
    drop(tx);
    print.await.expect("printer");
    image
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_app_builds_and_answers_on_its_exposed_port() {
    let stack = stack_image().await;
    let dockerfile = format!(
        "FROM {stack}\nCOPY server.py /srv/server.py\nENV GREETING=dockerfile\nEXPOSE 7000\n\
         USER 1000\nCMD [\"python3\", \"/srv/server.py\"]\n"
    );
    let mut app = App::new(
        "docker",
        &[
            ("Dockerfile", &dockerfile),
            (
                "server.py",
                &python_server("os.environ['GREETING'] + ' app'"),
            ),
            // A requirements.txt does not make it a Python buildpack build: the Dockerfile wins.
            ("requirements.txt", "six\n"),
        ],
    );
    let id = build_id("docker");
    let started = Instant::now();
    let (built, lines) = app.build(&id).await;
    let built = built.expect("the build succeeds");
    println!("Dockerfile build: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(built.kind, "Dockerfile");
    assert_eq!(built.port, Some(7000));
    assert_eq!(built.processes.len(), 1);
    assert!(built.processes["web"].is_empty());
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Step 1/7 : FROM flynn/stack:")),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .any(|l| l == "-----> web listens on port 7000 (EXPOSE)"));
    assert_eq!(app.serve(&built.image, &[], 7000).await, "dockerfile app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_errors_are_clear() {
    let mut app = App::new(
        "dockermissing",
        &[("Dockerfile", "FROM flynn/not-here:1\nRUN true\n")],
    );
    let (result, _) = app.build(&build_id("missing")).await;
    let err = result.expect_err("a missing base image fails");
    assert!(
        matches!(&err, BuildError::MissingBaseImage(i) if i == "flynn/not-here:1"),
        "{err:?}"
    );
    assert!(err.to_string().contains("not in the Docker Engine"));

    let stack = stack_image().await;
    let mut app = App::new(
        "dockerfail",
        &[(
            "Dockerfile",
            &format!("FROM {stack}\nRUN echo about to fail && exit 3\n"),
        )],
    );
    let id = build_id("fail");
    let (result, _) = app.build(&id).await;
    let err = result.expect_err("a failing step fails");
    let text = err.to_string();
    assert!(matches!(err, BuildError::Dockerfile { .. }), "{err:?}");
    assert!(text.contains("returned a non-zero code: 3"), "{text}");
    assert!(text.contains("about to fail"), "{text}");
    assert!(!image_exists(&format!("flynn/app-{}:{id}", app.name)));
}

/// `.dockerignore` leaves a file, a directory, a `**` pattern's files and the two build files
/// out of `COPY . /app`; `!` exceptions take back a file inside the excluded directory and
/// one `**` file. What arrived is listed by running the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerignore_leaves_paths_out_of_the_context() {
    let stack = stack_image().await;
    let dockerfile = format!(
        "FROM {stack}\nCOPY . /app\nRUN find /app -mindepth 1 | sort | sed 's/^/in context: /'\n\
         CMD [\"find\", \"/app\", \"-mindepth\", \"1\"]\n"
    );
    let ignore = "# what stays out of the image\n\
                  secret.txt\n\
                  /build/\n\
                  !build/version.txt\n\
                  **/*.log\n\
                  !logs/keep.log\n\
                  docs/*.md\n\
                  !docs/README.md\n\
                  cfg/[ab].conf\n\
                  *.tm?\n\
                  ./Dockerfile\n\
                  .dockerignore\n";
    let mut app = App::new(
        "dockerignore",
        &[
            ("Dockerfile", &dockerfile),
            (".dockerignore", ignore),
            ("app.txt", "the app\n"),
            ("secret.txt", "password\n"),
            ("build/out.bin", "binary\n"),
            ("build/version.txt", "1.0\n"),
            ("build/cache/deep.txt", "cache\n"),
            ("debug.log", "log\n"),
            ("src/main.py", "print(1)\n"),
            ("src/deep/trace.log", "log\n"),
            ("logs/keep.log", "kept\n"),
            ("logs/other.log", "log\n"),
            ("docs/guide.md", "guide\n"),
            ("docs/README.md", "readme\n"),
            ("cfg/a.conf", "a\n"),
            ("cfg/c.conf", "c\n"),
            ("notes.tmp", "tmp\n"),
        ],
    );
    let (built, lines) = app.build(&build_id("ignore")).await;
    let built = built.expect("the build succeeds");
    assert!(
        lines
            .iter()
            .any(|l| l == "-----> .dockerignore: 9 paths left out of the build context"),
        "{lines:?}"
    );
    let files = listing(&built.image);
    println!("{files:#?}");
    assert_eq!(
        files,
        [
            "/app/app.txt",
            "/app/build",
            "/app/build/version.txt",
            "/app/cfg",
            "/app/cfg/c.conf",
            "/app/docs",
            "/app/docs/README.md",
            "/app/logs",
            "/app/logs/keep.log",
            "/app/src",
            // Not excluded itself (only its .log is), so it arrives empty, as with Docker.
            "/app/src/deep",
            "/app/src/main.py",
        ]
    );
    // Docker's own CLI (its classic context upload, which applies .dockerignore itself) makes
    // the same image from the same tree.
    let oracle = format!("flynn/app-{}:docker-cli", app.name);
    let cli = std::process::Command::new("docker")
        .args(["build", "-q", "-t", &oracle])
        .arg(app.source.path())
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build");
    let oracle_files = cli.status.success().then(|| listing(&oracle));
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &oracle])
        .output();
    assert!(cli.status.success(), "docker build: {cli:?}");
    assert_eq!(oracle_files.as_ref(), Some(&files));
    // The build's own RUN saw the same context.
    assert!(lines
        .iter()
        .any(|l| l.contains("in context: /app/build/version.txt")));
    assert!(!lines
        .iter()
        .any(|l| l.contains("in context: /app/secret.txt")));

    // A malformed pattern fails the push before anything is sent, naming its line.
    let mut app = App::new(
        "dockerignorebad",
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /\n"),
            (".dockerignore", "# fine\n*.tmp\nsrc/[abc\n"),
        ],
    );
    let (result, _) = app.build(&build_id("ignorebad")).await;
    let err = result.expect_err("a malformed .dockerignore fails the build");
    assert!(matches!(err, BuildError::Dockerignore(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        ".dockerignore line 3: \"src/[abc\": syntax error in pattern (a [ without its ])"
    );
}

/// The paths under `/app` in `image`, sorted, as its CMD (`find /app`) lists them.
fn listing(image: &str) -> Vec<String> {
    let run = std::process::Command::new("docker")
        .args(["run", "--rm", image])
        .output()
        .expect("docker run");
    assert!(run.status.success(), "{run:?}");
    let mut files: Vec<String> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    files.sort();
    files
}
