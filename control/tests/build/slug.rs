//! A Procfile-only app (no requirements.txt: a Python script the stack runs as is) pushed and
//! served; then the slug path for hosts without the image: the controller keeps the build's
//! slug and serves it with the key, the artifact says where it is, and once the app's image
//! is removed from the engine the host agent fetches the slug and rebuilds the image (once,
//! for two jobs starting together), and the jobs answer through the router again. Without
//! the slug, the job crashes with the reason.

use std::process::Command;
use std::time::Duration;

use flynn_testkit::eventually;

use super::Push;

fn server_py() -> String {
    super::python_json_server(
        "import socket",
        r#""app": "procfile", "host": socket.gethostname()"#,
    )
}

/// `curl` with the key (or none): the status and the body.
fn curl(url: &str, key: Option<&str>) -> (u16, Vec<u8>) {
    let mut command = Command::new("curl");
    command.args(["-s", "-o", "-", "-w", "%{http_code}", "--max-time", "30"]);
    if let Some(key) = key {
        command.args(["-H", &format!("Authorization: Bearer {key}")]);
    }
    let out = command
        .arg(url)
        .output()
        .expect("run curl (the tests need it)");
    assert!(out.status.success(), "curl {url}: {out:?}");
    let mut body = out.stdout;
    let code = body.split_off(body.len().saturating_sub(3));
    let status = String::from_utf8_lossy(&code).parse().expect("status code");
    (status, body)
}

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker (the tests need it)")
}

#[tokio::test]
async fn a_procfile_app_is_served_and_a_host_without_its_image_rebuilds_it_from_the_slug() {
    let p = Push::new("slugger").await;
    p.commit(
        &[
            ("Procfile", b"web: exec python3 server.py\n"),
            ("server.py", server_py().as_bytes()),
        ],
        "v1",
    );
    let pushed = p.push("main");
    p.assert_pushed(
        &pushed,
        &[
            "remote: -----> Procfile app detected",
            "remote: -----> Releasing",
            "deployed to http://",
        ],
    );
    eventually(
        Duration::from_secs(15),
        "the procfile app served",
        || async { p.answer().await.is_some_and(|a| a["app"] == "procfile") },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", p.server.log()));
    let first = p.answer().await.expect("answer");

    // The artifact says where the slug is; the controller serves it with the key only.
    let key = p.server.key();
    let (status, body) = curl(&format!("{}/artifacts", p.controller()), Some(&key));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let artifacts: Vec<serde_json::Value> = serde_json::from_slice(&body).expect("artifacts");
    let artifact = artifacts
        .iter()
        .find(|a| {
            a["meta"]["docker.image"]
                .as_str()
                .is_some_and(|i| i.contains(&p.app))
        })
        .unwrap_or_else(|| panic!("no artifact of {}: {artifacts:?}", p.app));
    let meta = &artifact["meta"];
    let (image_id, tag) = (
        artifact["uri"].as_str().expect("uri").to_owned(),
        meta["docker.image"].as_str().expect("tag").to_owned(),
    );
    let build = meta["build.id"].as_str().expect("build.id").to_owned();
    let url = meta["slug.url"].as_str().expect("slug.url").to_owned();
    assert!(
        meta["slug.stack"]
            .as_str()
            .is_some_and(|s| s.starts_with("flynn/stack:")),
        "{meta}"
    );
    let prefix = format!("{}/apps/", p.controller());
    let app_id = url
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(&format!("/slugs/{build}")))
        .unwrap_or_else(|| panic!("slug URL {url:?}"))
        .to_owned();
    let kept = p
        .server
        .data
        .path()
        .join("slugs")
        .join(&app_id)
        .join(format!("{build}.tgz"));
    let (status, slug) = curl(&url, Some(&key));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&slug));
    assert_eq!(slug, std::fs::read(&kept).expect("the kept slug"));
    assert_eq!(slug[..2], [0x1f, 0x8b], "a gzip stream");
    assert_eq!(curl(&url, None).0, 401);
    assert_eq!(curl(&url, Some("wrong")).0, 401);
    let other = format!("{prefix}{app_id}/slugs/0123456789abcdef");
    assert_eq!(curl(&other, Some(&key)).0, 404);

    // The image goes; two jobs start together: one rebuild from the slug, both serve.
    p.client
        .run_in(&p.repo, &["scale", "web=0"], &[])
        .await
        .ok();
    let removed = docker(&["rmi", &tag]);
    assert!(removed.status.success(), "docker rmi {tag}: {removed:?}");
    assert!(!docker(&["image", "inspect", &image_id]).status.success());
    let out = p.client.run_in(&p.repo, &["scale", "web=2"], &[]).await;
    assert_eq!(out.code, 0, "{out:?}\nserver log:\n{}", p.server.log());
    let hosts = std::cell::RefCell::new(std::collections::BTreeSet::new());
    eventually(
        Duration::from_secs(15),
        "both rebuilt jobs served",
        || async {
            if let Some(a) = p.answer().await {
                assert_eq!(a["release"], first["release"], "{a}");
                let host = a["host"].as_str().unwrap_or_default().to_owned();
                hosts.borrow_mut().insert(host);
            }
            hosts.borrow().len() == 2
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\nserver log:\n{}", p.server.log()));
    let rebuilt = docker(&["image", "inspect", "-f", "{{.Id}}", &tag]);
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    assert_ne!(String::from_utf8_lossy(&rebuilt.stdout).trim(), image_id);
    let images = docker(&[
        "images",
        "-aq",
        "--filter",
        &format!("label=flynn.builder.build={build}"),
    ]);
    let images = String::from_utf8_lossy(&images.stdout).lines().count();
    assert_eq!(images, 1, "one image rebuilt for two jobs");
    let log = p.server.log();
    assert_eq!(
        log.matches("an image rebuilt from its slug").count(),
        1,
        "{log}"
    );

    // No image and no slug: the job crashes, saying why.
    p.client
        .run_in(&p.repo, &["scale", "web=0"], &[])
        .await
        .ok();
    assert!(docker(&["rmi", &tag]).status.success());
    std::fs::remove_file(&kept).expect("remove the slug");
    let out = p
        .client
        .run_in(&p.repo, &["scale", "web=1", "--timeout", "30s"], &[])
        .await;
    assert_ne!(out.code, 0, "{out:?}");
    let reason = format!("cannot fetch the slug of image {tag} from {url}: 404 Not Found");
    assert!(out.stderr.contains("crashed: "), "{out:?}");
    assert!(out.stderr.contains(&reason), "{reason:?} missing: {out:?}");
}
