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
