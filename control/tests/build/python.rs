//! A Python app (Heroku's classic buildpack API in a container of the stack image; one small
//! package from PyPI) pushed, served through the router, changed and pushed again with the
//! build cache warm: the new answer is served once the push ends. Prints push-to-served times.

use std::time::{Duration, Instant};

use super::{python_json_server, Push};
use flynn_testkit::eventually;

fn app_py(version: &str) -> String {
    python_json_server(
        "import six",
        &format!(r#""version": "{version}", "six": six.__version__"#),
    )
}

#[tokio::test]
async fn a_python_app_is_pushed_served_and_pushed_again_with_a_warm_cache() {
    let p = Push::new("snake").await;
    p.commit(
        &[
            ("requirements.txt", b"six\n"),
            ("Procfile", b"web: python app.py\n"),
            ("app.py", app_py("v1").as_bytes()),
        ],
        "v1",
    );
    let started = Instant::now();
    let pushed = p.push("main");
    p.assert_pushed(
        &pushed,
        &[
            "remote: -----> Receiving main",
            "remote: -----> Building",
            "Successfully installed six",
            "remote: -----> Releasing",
            "remote: -----> Deploying",
            "deployed to http://",
        ],
    );
    eventually(Duration::from_secs(15), "the python app served", || async {
        p.answer().await.is_some_and(|a| a["version"] == "v1")
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", p.server.log()));
    let cold = started.elapsed();
    let cold_push = pushed.took;
    let first = p.answer().await.expect("answer");
    assert!(
        first["six"].as_str().is_some_and(|v| v.starts_with("1.")),
        "{first}"
    );

    // One file changed: the wheels come from the build cache; the new code serves at the end.
    p.commit(&[("app.py", app_py("v2").as_bytes())], "v2");
    let started = Instant::now();
    let pushed = p.push("main");
    p.assert_pushed(&pushed, &[]);
    for line in pushed.text.lines().filter(|l| l.contains("-----> ")) {
        eprintln!("warm push: {}", line.trim_end());
    }
    let second = p.answer().await.expect("served right after the push");
    let warm = started.elapsed();
    assert_eq!(second["version"], "v2", "{second}");
    assert_ne!(second["release"], first["release"]);
    eprintln!(
        "python app push-to-served: cold {:.1}s (git push {:.1}s), warm {:.1}s",
        cold.as_secs_f64(),
        cold_push.as_secs_f64(),
        warm.as_secs_f64()
    );
}
