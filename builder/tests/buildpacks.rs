//! Buildpack builds against the real Docker Engine and real PyPI: the stack image is built
//! once (or reused when the engine has it), each app kind builds and its image answers HTTP.

mod common;

use std::collections::HashMap;
use std::time::Instant;

use common::{build_containers, build_id, image_exists, python_server, App};
use flynn_builder::{slug, BuildError, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procfile_app_builds_and_answers() {
    let mut app = App::new(
        "procfile",
        &[
            (
                "Procfile",
                "# processes\nweb: exec python3 server.py\n\nworker: sleep infinity\n",
            ),
            (
                "server.py",
                &python_server("'procfile app ' + os.environ['PORT']"),
            ),
        ],
    );
    let id = build_id("procfile");
    let started = Instant::now();
    let (built, lines) = app.build(&id).await;
    let built = built.expect("the build succeeds");
    println!("procfile build: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(built.kind, "buildpack procfile");
    assert_eq!(built.image, format!("flynn/app-{}:{id}", app.name));
    assert!(built.image_id.starts_with("sha256:"));
    assert_eq!(
        built.processes["web"],
        ["/runner/init", "exec python3 server.py"]
    );
    assert_eq!(
        built.processes["worker"],
        ["/runner/init", "sleep infinity"]
    );
    assert!(
        lines.iter().any(|l| l == "-----> Procfile app detected"),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .any(|l| l == "-----> Releasing: process types web, worker"));
    let body = app.serve(&built.image, &built.processes["web"], 5005).await;
    assert_eq!(body, "procfile app 5005");
    // The app runs as the unprivileged user, in /app.
    assert_eq!(
        app.run_once(&built.image, "id -u; pwd").trim(),
        "1000\n/app"
    );
    assert!(
        build_containers(&id).is_empty(),
        "the build container is removed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_app_with_requirements_answers() {
    let mut app = App::new(
        "python",
        &[
            ("requirements.txt", "six\n"),
            ("Procfile", "web: python app.py\n"),
            (
                "app.py",
                &python_server("'python app, six ' + __import__('six').__version__"),
            ),
        ],
    );
    let id = build_id("python");
    let started = Instant::now();
    let (built, lines) = app.build(&id).await;
    let built = built.expect("the build succeeds");
    println!(
        "python build (cold cache): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(built.kind, "buildpack python");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Successfully installed six")),
        "{lines:?}"
    );
    let body = app.serve(&built.image, &built.processes["web"], 8080).await;
    assert!(body.starts_with("python app, six 1."), "{body}");
    // The virtualenv's python is the one on PATH at run time (from .profile.d).
    assert_eq!(
        app.run_once(&built.image, "command -v python").trim(),
        "/app/.venv/bin/python"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_rebuilds_reuse_the_cache() {
    let mut app = App::new(
        "pycache",
        &[
            ("requirements.txt", "six\n"),
            ("app.py", &python_server("'cached'")),
        ],
    );
    let started = Instant::now();
    let (first, lines) = app.build(&build_id("cache1")).await;
    let first = first.expect("the first build succeeds");
    println!(
        "python build 1 (cold): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        lines.iter().any(|l| l.contains("Downloading six")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.contains("Saved /cache/wheels/six-")),
        "{lines:?}"
    );
    // No Procfile: the buildpack's default web process (app.py).
    assert_eq!(first.processes["web"], ["/runner/init", "python app.py"]);

    // The same requirements: the cached virtualenv is reused, nothing is fetched.
    let started = Instant::now();
    let (second, lines) = app.build(&build_id("cache2")).await;
    let second = second.map_err(|e| e.to_string());
    println!(
        "python build 2 (same requirements): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Reusing the virtualenv from the build cache")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("requirements.txt unchanged: its packages are installed")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("Downloading")),
        "{lines:?}"
    );
    // The virtualenv is the same: its image layer (made by the first build) is reused.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("dependencies unchanged (deps-")),
        "{lines:?}"
    );
    let second = second.expect("the second build succeeds");
    let body = app
        .serve(&second.image, &second.processes["web"], 8080)
        .await;
    assert_eq!(body, "cached");

    // Changed requirements: a fresh virtualenv, the wheel from the build cache.
    app.write(&[("requirements.txt", "# pinned later\nsix\n")]);
    let started = Instant::now();
    let (third, lines) = app.build(&build_id("cache3")).await;
    let third = third.expect("the third build succeeds");
    println!(
        "python build 3 (new requirements, cached wheels): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(
        lines.iter().any(|l| l.contains("Creating a virtualenv")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("File was already downloaded /cache/wheels/six-")),
        "{lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("Downloading")),
        "{lines:?}"
    );
    let body = app.serve(&third.image, &third.processes["web"], 8080).await;
    assert_eq!(body, "cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_app_serves_its_public_dir() {
    let mut app = App::new(
        "static",
        &[
            ("public/index.html", "<h1>static app</h1>\n"),
            ("public/css/site.css", "h1 { color: red }\n"),
            ("notes.txt", "not served\n"),
        ],
    );
    let id = build_id("static");
    let started = Instant::now();
    let (built, lines) = app.build(&id).await;
    let built = built.expect("the build succeeds");
    println!("static build: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(built.kind, "buildpack static");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("serving /app/public (2 files)")),
        "{lines:?}"
    );
    let body = app.serve(&built.image, &built.processes["web"], 8080).await;
    assert_eq!(body, "<h1>static app</h1>\n");
    let listing = app.run_once(&built.image, "echo $STATIC_ROOT");
    assert_eq!(listing.trim(), "/app/public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_compile_says_why_and_leaves_nothing() {
    let mut app = App::new(
        "failing",
        &[
            ("requirements.txt", "flynn-no-such-package-7f3a9c==0.0.1\n"),
            ("app.py", "print('never')\n"),
        ],
    );
    let id = build_id("failing");
    let (result, _lines) = app.build(&id).await;
    let err = result.expect_err("the build fails");
    let text = err.to_string();
    assert!(
        matches!(
            err,
            BuildError::Buildpack {
                stage: "compile",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        text.starts_with("buildpack python: compile failed: exit status 1"),
        "{text}"
    );
    assert!(
        text.contains("No matching distribution found for flynn-no-such-package-7f3a9c"),
        "{text}"
    );
    assert!(!image_exists(&format!("flynn/app-{}:{id}", app.name)));
    assert!(build_containers(&id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_no_buildpack_knows_is_refused() {
    let mut app = App::new("unknown", &[("README", "just words\n")]);
    let (result, _) = app.build(&build_id("unknown")).await;
    assert!(matches!(result, Err(BuildError::NoBuildpack)), "{result:?}");
    let mut bad = App::new("badprocfile", &[("Procfile", "web python app.py\n")]);
    let (result, _) = bad.build(&build_id("badprocfile")).await;
    let err = result.expect_err("a bad Procfile fails the build");
    assert_eq!(
        err.to_string(),
        "Procfile line 1: expected `type: command`, found \"web python app.py\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_receiver_cancels_the_build_and_cleans_up() {
    let app = App::new(
        "cancel",
        &[
            ("requirements.txt", "six\n"),
            ("Procfile", "web: sleep 1000\n"),
        ],
    );
    let id = build_id("cancel");
    let build = flynn_builder::Build {
        app_id: "id-cancel".into(),
        app_name: app.name.clone(),
        build_id: id.clone(),
        source: app.source.path().to_owned(),
        env: Default::default(),
        cache_dir: app.cache.path().join("cache"),
        docker: None,
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(64);
    let task =
        tokio::spawn(async move { flynn_builder::build(&build, &Options::default(), &tx).await });
    // The pusher leaves once compiling has begun.
    while let Some(line) = rx.recv().await {
        if line.contains("Compiling with the python buildpack") {
            break;
        }
    }
    assert!(
        !build_containers(&id).is_empty(),
        "the build container runs"
    );
    drop(rx);
    let result = task.await.expect("the build task");
    assert!(matches!(result, Err(BuildError::Cancelled)), "{result:?}");
    let deadline = Instant::now() + std::time::Duration::from_secs(20);
    while !build_containers(&id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the build container was not removed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!image_exists(&format!("flynn/app-{}:{id}", app.name)));
}

/// The slug a build keeps (`Options::slug_dir`) rebuilds a working image of the app on the
/// stack alone, as a host agent on another machine would (`slug::image_from_slug`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_slug_rebuilds_the_app_image() {
    let mut app = App::new(
        "slug",
        &[
            ("Procfile", "web: exec python3 server.py\n"),
            ("server.py", &python_server("'from the slug'")),
        ],
    );
    let slugs = app.cache.path().join("slugs");
    let options = Options {
        slug_dir: Some(slugs.clone()),
        ..Options::default()
    };
    let id = build_id("slug");
    let (built, _lines) = app.build_with(&id, &options).await;
    let built = built.expect("the build succeeds");
    let kept = built.slug.expect("the slug is kept");
    assert_eq!(kept, slugs.join(format!("{id}.tgz")));
    let slug = std::fs::read(&kept).expect("read the slug");

    // Another image from the slug and the stack only, under a tag of its own.
    let tag = flynn_builder::image_tag(&app.name, &build_id("fromslug")).expect("tag");
    app.owns_image(&tag);
    let docker = flynn_builder::connect(None).expect("engine");
    let (stack, _) = options.stack();
    let labels = HashMap::from([("flynn.builder.app-name".to_owned(), app.name.clone())]);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let rebuilt = slug::image_from_slug(&docker, &stack, slug, &tag, labels, &tx)
        .await
        .expect("the image is rebuilt from the slug");
    drop(tx);
    drain.await.expect("drain");
    assert!(rebuilt.image_id.starts_with("sha256:"));
    assert_ne!(rebuilt.image_id, built.image_id);
    let procfile = rebuilt.procfile.expect("the slug's Procfile");
    let argv = slug::argv(&procfile["web"]);
    assert_eq!(argv, built.processes["web"]);
    let body = app.serve(&tag, &argv, 5006).await;
    assert_eq!(body, "from the slug");
    assert_eq!(app.run_once(&tag, "id -u; pwd").trim(), "1000\n/app");
}
