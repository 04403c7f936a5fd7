//! BUILDPACK_URL: a buildpack from a directory on this machine or from a git repository, which
//! gets the app's env in its ENV dir and the build cache.

mod common;

use std::process::Command;

use common::{build_id, write_tree, App};
use flynn_builder::BuildError;

const DETECT: &str = "#!/bin/sh\necho Greeter\n";
const COMPILE: &str = "#!/bin/sh\nset -e\necho \"-----> greeting with $(cat \"$3/GREETING\")\"\n\
    cat \"$3/GREETING\" > \"$1/greeting.txt\"\ncount=$(cat \"$2/count\" 2>/dev/null || echo 0)\n\
    echo $((count + 1)) > \"$2/count\"\necho \"-----> build number $((count + 1))\"\n";
const RELEASE: &str =
    "#!/bin/sh\ncat <<'YAML'\n---\ndefault_process_types:\n  web: cat greeting.txt\nYAML\n";

fn buildpack(dir: &std::path::Path) {
    write_tree(
        dir,
        &[
            ("bin/detect", DETECT),
            ("bin/compile", COMPILE),
            ("bin/release", RELEASE),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildpack_url_a_local_dir() {
    let pack = tempfile::tempdir().expect("tempdir");
    buildpack(pack.path());
    // A requirements.txt would pick python: BUILDPACK_URL overrides detection.
    let mut app = App::new(
        "custom",
        &[("requirements.txt", "six\n"), ("Procfile", "clock: true\n")],
    );
    app.env
        .insert("BUILDPACK_URL".into(), pack.path().display().to_string());
    app.env
        .insert("GREETING".into(), "hello from the env".into());
    let (built, lines) = app.build(&build_id("custom1")).await;
    let built = built.expect("the build succeeds");
    assert_eq!(built.kind, "buildpack custom");
    assert!(
        lines.iter().any(|l| l == "-----> Greeter app detected"),
        "{lines:?}"
    );
    assert!(lines
        .iter()
        .any(|l| l == "-----> greeting with hello from the env"));
    assert!(lines.iter().any(|l| l == "-----> build number 1"));
    assert_eq!(built.processes["web"], ["/runner/init", "cat greeting.txt"]);
    assert_eq!(built.processes["clock"], ["/runner/init", "true"]);
    assert_eq!(
        app.run_once(&built.image, "cat greeting.txt"),
        "hello from the env"
    );

    // The cache dir persists between builds of the app.
    let (again, lines) = app.build(&build_id("custom2")).await;
    again.expect("the second build succeeds");
    assert!(
        lines.iter().any(|l| l == "-----> build number 2"),
        "{lines:?}"
    );

    // A buildpack dir without bin/compile is refused before anything runs.
    app.env
        .insert("BUILDPACK_URL".into(), "/nonexistent/buildpack".into());
    let (result, _) = app.build(&build_id("custom3")).await;
    let err = result.expect_err("a missing buildpack fails");
    assert!(matches!(err, BuildError::BuildpackUrl { .. }), "{err:?}");
    assert!(err.to_string().contains("no such directory"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buildpack_url_a_git_repository() {
    let repo = tempfile::tempdir().expect("tempdir");
    buildpack(repo.path());
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@example.com",
                "-c",
                "init.defaultBranch=main",
            ])
            .args(args)
            .current_dir(repo.path())
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "buildpack"]);
    let mut app = App::new("gitpack", &[("anything", "x\n")]);
    let url = format!("file://{}#main", repo.path().display());
    app.env.insert("BUILDPACK_URL".into(), url);
    app.env.insert("GREETING".into(), "from git".into());
    let (built, lines) = app.build(&build_id("gitpack")).await;
    let built = built.expect("the build succeeds");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("-----> Fetching the buildpack file://")),
        "{lines:?}"
    );
    assert_eq!(app.run_once(&built.image, "cat greeting.txt"), "from git");

    let missing = format!("file://{}/nothing-here", repo.path().display());
    app.env.insert("BUILDPACK_URL".into(), missing);
    let (result, _) = app.build(&build_id("gitpack2")).await;
    let err = result.expect_err("a bad git URL fails");
    assert!(err.to_string().contains("git clone failed"), "{err}");
}
