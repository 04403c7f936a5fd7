//! Placement by tags on real host agents (`flynn host --tag`, each on its own 127.0.0.x, one
//! etcd): a process type constrained to a tag runs only on the hosts with it; omni types run
//! on every host, following hosts as they come and go; a job no host matches is `blocked`
//! (in `flynn ps` and the jobs API, with the reason) until a matching host comes, and its
//! life is on the controller's `/events`. Bad tags and omni values are one-line errors.

use std::collections::BTreeSet;
use std::process::Command;

use flynn_testkit::Etcd;
use serde_json::{json, Value};

use super::harness::{Client, Server, FLYNN};
use super::hosts::{settle, up_on, Agent};
use super::{Containers, Setup, TestImage};

/// `METHOD path` on the controller API with its key (through curl); the status and the JSON.
pub(super) fn api(server: &Server, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-X", method, "-w", "\n%{http_code}"])
        .args(["-H", &format!("Authorization: Bearer {}", server.key())])
        .args(["-H", "Content-Type: application/json"]);
    if let Some(body) = body {
        command.args(["--data-binary", &body.to_string()]);
    }
    let out = command
        .arg(format!("http://{}{path}", server.controller))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').expect("curl's status line");
    let status = status.trim().parse().expect("status");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// The states of job `id` in the app's job events, in order.
pub(super) fn job_states(server: &Server, app_id: &str, id: &str) -> Vec<String> {
    let (status, events) = api(
        server,
        "GET",
        &format!("/events?object_types=job&app_id={app_id}"),
        None,
    );
    assert_eq!(status, 200, "{events}");
    events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["object_id"] == id)
        .filter_map(|e| e["data"]["state"].as_str().map(str::to_owned))
        .collect()
}

/// A server without a host agent on a fresh etcd, and an app on it.
async fn cluster(etcd: &Etcd, app: &str) -> Setup {
    let client = Client::new();
    let server = Server::etcd_with(&client, &etcd.url(), &["--no-host-agent"]).await;
    client.run(&["create", app]).await.ok();
    Setup {
        server,
        containers: Containers::new("test"),
        image: TestImage::build(),
        client,
        app: app.to_owned(),
    }
}

/// The host records in the store, by id: their tags.
async fn host_tags(store: &dyn flynn_store::Store) -> Vec<(String, Value)> {
    let listed = store.range("/flynn/hosts/").await.expect("hosts");
    listed
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Value>(&kv.value).ok())
        .map(|h| (h["id"].as_str().unwrap_or("").to_owned(), h["tags"].clone()))
        .collect()
}

#[tokio::test]
async fn tagged_jobs_land_on_matching_hosts_and_omni_runs_on_each() {
    let etcd = Etcd::start().await;
    let s = cluster(&etcd, "tagged").await;
    let key = s.server.key();
    let (a, b) = (&s.containers, Containers::new("test"));
    let agent_a = Agent::tagged(
        &etcd.url(),
        &key,
        &a.host,
        "127.0.0.2",
        &["disk=hdd", "zone=x"],
    );
    let mut agent_b = Agent::tagged(&etcd.url(), &key, &b.host, "127.0.0.3", &["disk=ssd"]);
    let store = flynn_store::open(&etcd.url()).await.expect("open etcd");
    settle(
        &s,
        &[&agent_a, &agent_b],
        "both hosts registered",
        || async { host_tags(store.as_ref()).await.len() == 2 },
    )
    .await;
    // `--tag` reaches each host's record.
    let mut tags = host_tags(store.as_ref()).await;
    tags.sort_by(|x, y| x.0.cmp(&y.0));
    let mut want = vec![
        (a.host.clone(), json!({"disk": "hdd", "zone": "x"})),
        (b.host.clone(), json!({"disk": "ssd"})),
    ];
    want.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(tags, want);
    s.deploy().await;

    // Constrained to disk=ssd: every job on B.
    let out = s.flynn(&["scale", "web=3", "--tag", "web:disk=ssd"]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");
    assert_eq!(up_on(&s, &b.host).await.len(), 3, "{:?}", s.jobs().await);
    assert!(up_on(&s, &a.host).await.is_empty());
    assert_eq!((a.all().len(), b.running().len()), (0, 3));
    assert_eq!(s.flynn(&["scale"]).await.ok(), "web=3 (disk=ssd)\n");
    let on_b = up_on(&s, &b.host).await;
    settle(&s, &[&agent_a, &agent_b], "B's jobs routed", || async {
        s.routed(30).await == on_b
    })
    .await;

    // The tag dropped and one more: it goes to A (the fewest jobs), B's stay.
    let out = s.flynn(&["scale", "web=4", "--untag", "web:disk"]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");
    assert_eq!(up_on(&s, &a.host).await.len(), 1);
    assert_eq!(up_on(&s, &b.host).await, on_b);
    assert_eq!(s.flynn(&["scale"]).await.ok(), "web=4\n");

    // Constrained to disk=hdd: B's jobs no longer match; all four end up on A.
    let out = s.flynn(&["scale", "--tag", "web:disk=hdd"]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");
    assert_eq!(up_on(&s, &a.host).await.len(), 4);
    assert!(up_on(&s, &b.host).await.is_empty());
    assert_eq!((a.running().len(), b.all().len()), (4, 0));
    let out = s.flynn(&["scale", "web=0", "--untag", "web:disk"]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");

    // An omni web (a release like the current one, `"omni": true`): one job on each host.
    let (_, app) = api(&s.server, "GET", "/apps/tagged", None);
    let current = app["release_id"].as_str().expect("release");
    let (_, release) = api(&s.server, "GET", &format!("/releases/{current}"), None);
    let (status, omni) = api(
        &s.server,
        "POST",
        "/releases",
        Some(&json!({
            "app_id": app["id"],
            "artifacts": release["artifacts"],
            "processes": {"web": {"omni": true}},
        })),
    );
    assert_eq!(status, 201, "{omni}");
    let (status, deployed) = api(
        &s.server,
        "POST",
        "/apps/tagged/deploy",
        Some(&json!({"id": omni["id"]})),
    );
    assert!((200..300).contains(&status), "{deployed}");
    settle(
        &s,
        &[&agent_a, &agent_b],
        "the omni release current",
        || async { api(&s.server, "GET", "/apps/tagged", None).1["release_id"] == omni["id"] },
    )
    .await;
    let out = s.flynn(&["scale", "web=1"]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");
    assert_eq!(up_on(&s, &a.host).await.len(), 1, "{:?}", s.jobs().await);
    assert_eq!(up_on(&s, &b.host).await.len(), 1);
    let on_a = up_on(&s, &a.host).await;

    // B dies: its job goes with it and none moves to A (A has its own). B comes back: it
    // removes its orphan and gets a new omni job.
    agent_b.kill();
    settle(&s, &[&agent_a, &agent_b], "B's job gone", || async {
        s.jobs().await.len() == 1
    })
    .await;
    assert_eq!(up_on(&s, &a.host).await, on_a);
    agent_b.restart();
    settle(
        &s,
        &[&agent_a, &agent_b],
        "an omni job up on B again",
        || async { up_on(&s, &b.host).await.len() == 1 && b.running().len() == 1 },
    )
    .await;
    assert_eq!(up_on(&s, &a.host).await, on_a);
    let both: BTreeSet<String> = s
        .jobs()
        .await
        .iter()
        .filter_map(|j| j["id"].as_str().map(str::to_owned))
        .collect();
    settle(
        &s,
        &[&agent_a, &agent_b],
        "both omni jobs routed",
        || async { s.routed(30).await == both },
    )
    .await;

    let out = s.flynn(&["scale", "web=0"]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");
    assert!(a.all().is_empty() && b.all().is_empty());
    drop(agent_b);
    drop(agent_a);
}

#[tokio::test]
async fn a_job_no_host_matches_is_blocked_until_one_comes() {
    let etcd = Etcd::start().await;
    let s = cluster(&etcd, "waiting").await;
    let key = s.server.key();
    let (a, b) = (&s.containers, Containers::new("test"));
    let agent_a = Agent::tagged(&etcd.url(), &key, &a.host, "127.0.0.2", &["disk=hdd"]);
    s.deploy().await;
    let (_, app) = api(&s.server, "GET", "/apps/waiting", None);
    let app_id = app["id"].as_str().expect("app id").to_owned();
    settle(&s, &[&agent_a], "A registered", || async {
        api(&s.server, "GET", "/hosts", None)
            .1
            .as_array()
            .is_some_and(|h| h.len() == 1)
    })
    .await;

    let out = s
        .flynn(&["scale", "web=1", "--tag", "web:disk=ssd", "-n"])
        .await;
    assert_eq!(out.ok(), "scaling web: 0=>1\n");
    settle(&s, &[&agent_a], "the job blocked", || async {
        s.jobs().await.iter().any(|j| j["state"] == "blocked")
    })
    .await;
    let jobs = s.jobs().await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let blocked = &jobs[0];
    assert_eq!(blocked["host_id"], "");
    assert_eq!(
        blocked["error"],
        "no host has the tags disk=ssd (of 1 live hosts)"
    );
    let id = blocked["id"].as_str().expect("id").to_owned();
    let ps = s.flynn(&["ps"]).await;
    let line = ps
        .ok()
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_default()
        .to_owned();
    assert!(
        line.contains("blocked: no host has the tags disk=ssd"),
        "{ps:?}"
    );
    // Through the jobs API too, and nothing runs anywhere.
    let (status, job) = api(&s.server, "GET", &format!("/apps/waiting/jobs/{id}"), None);
    assert_eq!((status, &job["state"]), (200, &json!("blocked")));
    assert!(a.all().is_empty());

    // A host with the tag comes: the same job runs there, and is routed.
    let started = std::time::Instant::now();
    let agent_b = Agent::tagged(&etcd.url(), &key, &b.host, "127.0.0.3", &["disk=ssd"]);
    let want = BTreeSet::from([id.clone()]);
    settle(
        &s,
        &[&agent_a, &agent_b],
        "the blocked job up on B",
        || async { up_on(&s, &b.host).await == want },
    )
    .await;
    eprintln!(
        "a blocked job up on the new matching host {:?} after the agent started",
        started.elapsed()
    );
    settle(&s, &[&agent_a, &agent_b], "the job routed", || async {
        s.routed(10).await == want
    })
    .await;
    assert_eq!(s.jobs().await.len(), 1);
    assert!(a.all().is_empty());

    // Its whole life on /events.
    let out = s.flynn(&["scale", "web=0"]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");
    settle(
        &s,
        &[&agent_a, &agent_b],
        "the job's states on /events",
        || async {
            job_states(&s.server, &app_id, &id)
                .last()
                .map(String::as_str)
                == Some("down")
        },
    )
    .await;
    assert_eq!(
        job_states(&s.server, &app_id, &id),
        ["blocked", "pending", "starting", "up", "stopping", "down"]
    );
    assert!(b.all().is_empty());
    drop(agent_b);
    drop(agent_a);
}

#[tokio::test]
async fn bad_tags_and_omni_are_one_line_errors_and_change_nothing() {
    let s = Setup::new("fussy").await;
    s.deploy().await;
    for (args, error) in [
        (
            &["scale", "web=1", "--tag", "web"][..],
            "expected TYPE:KEY=VALUE",
        ),
        (
            &["scale", "web=1", "--tag", "web:disk"],
            "expected TYPE:KEY=VALUE",
        ),
        (
            &["scale", "web=1", "--tag", ":disk=ssd"],
            "expected TYPE:KEY=VALUE",
        ),
        (&["scale", "--untag", "web"], "expected TYPE:KEY"),
        (
            &["scale", "web=1", "--tag", "worker:disk=ssd"],
            "tags for \"worker\": release",
        ),
    ] {
        s.flynn(args).await.fails_with(error);
    }
    assert_eq!(s.flynn(&["scale"]).await.ok(), "web=0\n");
    let (_, app) = api(&s.server, "GET", "/apps/fussy", None);
    let release = app["release_id"].as_str().expect("release").to_owned();
    // A constraint of an unknown shape: refused with the reason.
    for tags in [
        json!({"web": "ssd"}),
        json!({"web": {"disk": 1}}),
        json!(["web"]),
    ] {
        let (status, error) = api(
            &s.server,
            "PUT",
            &format!("/apps/fussy/formations/{release}"),
            Some(&json!({"processes": {"web": 1}, "tags": tags})),
        );
        assert_eq!(status, 400, "{tags}: {error}");
        let message = error["message"].as_str().unwrap_or_default();
        assert!(message.contains("tags"), "{tags}: {message}");
        assert!(!message.contains('\n'), "{message}");
    }
    // Omni that is not a boolean.
    let (status, error) = api(
        &s.server,
        "POST",
        "/releases",
        Some(&json!({"app_id": app["id"], "processes": {"web": {"omni": "yes"}}})),
    );
    assert_eq!(status, 400, "{error}");
    assert_eq!(
        error["message"],
        "process type \"web\": omni must be true or false, not \"yes\""
    );
    // `flynn host --tag` without '='.
    let out = Command::new(FLYNN)
        .args(["host", "--store", "etcd://127.0.0.1:1", "--tag", "disk"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("FLYNN_DATA", s.server.data.path())
        .output()
        .expect("run flynn host");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert_eq!(
        last, "flynn: --tag \"disk\": expected KEY=VALUE (e.g. disk=ssd)",
        "{stderr}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(s.jobs().await.is_empty());
    assert!(s.containers.all().is_empty());
    assert_eq!(s.flynn(&["scale"]).await.ok(), "web=0\n");
}
