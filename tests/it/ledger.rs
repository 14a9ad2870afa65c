//! The ledger through the real binary, on the embedded SQLite and on the
//! machine's PostgreSQL (each test in a database it creates and drops):
//! claims and their policies, replays, restarts and `kill -9`, two replicas
//! racing, a database that is unreachable or lost.

use std::process::Command;
use std::time::Duration;

use iapd::pb::{self, Claim, Verdict};
use tonic::Code;

use crate::support::{Sandbox, Server, built_plugin, error_info, unique};

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// Where a test's ledger lives.
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Db {
    fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().unwrap())
    }

    /// A fresh PostgreSQL database, dropped with the value.
    fn postgres() -> Db {
        let name = unique("iapd_test").replace('-', "_");
        psql(&format!("CREATE DATABASE {name}"));
        Db::Postgres(name)
    }

    fn both() -> [Db; 2] {
        [Db::sqlite(), Db::postgres()]
    }

    /// The environment that points iapd at this ledger.
    fn env(&self) -> (&'static str, String) {
        match self {
            Db::Sqlite(dir) => ("IAPD_LEDGER__DATA_DIR", dir.path().display().to_string()),
            Db::Postgres(name) => ("IAPD_LEDGER__URL", format!("{POSTGRES}/{name}")),
        }
    }

    fn start(&self, extra: &[(&str, &str)]) -> Server {
        self.start_with(None, extra)
    }

    fn start_with(&self, config: Option<&std::path::Path>, extra: &[(&str, &str)]) -> Server {
        let (name, value) = self.env();
        let mut envs = vec![(name, value.as_str())];
        envs.extend_from_slice(extra);
        Server::start(config, &envs)
    }

    fn name(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Db::Postgres(name) = self {
            psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

fn psql(sql: &str) {
    let output = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql (the PostgreSQL client) runs");
    assert!(output.status.success(), "{sql}: {}", String::from_utf8_lossy(&output.stderr));
}

fn verify_for(app_id: &str, token: &str, user_id: &str) -> pb::VerifyRequest {
    pb::VerifyRequest {
        store: "sandbox".into(),
        app_id: app_id.into(),
        product_id: "coins_100".into(),
        proof: crate::support::token(token),
        user_id: user_id.into(),
    }
}

/// Consumes a sandbox `coins_100` purchase of com.example.game.
fn consume_for(token: &str) -> pb::ConsumeRequest {
    pb::ConsumeRequest {
        store: "sandbox".into(),
        app_id: "com.example.game".into(),
        product_id: "coins_100".into(),
        proof: crate::support::token(token),
    }
}

fn ledger_of(answer: &pb::VerifyResponse) -> &pb::LedgerEntry {
    answer.ledger.as_ref().expect("the answer carries the ledger's record")
}

#[tokio::test]
async fn a_purchase_belongs_to_its_first_user_and_a_replay_by_another_is_refused() {
    for db in Db::both() {
        let db_name = db.name();
        let server = db.start(&[]);
        let mut client = server.client().await;
        let token = unique("purchased");

        let first = client.verify(verify_for("com.example.game", &token, "alice")).await.unwrap().into_inner();
        assert_eq!(first.verdict(), Verdict::Valid, "{db_name}");
        assert_eq!((ledger_of(&first).claim(), ledger_of(&first).seen_before), (Claim::New, false), "{db_name}");

        let again = client.verify(verify_for("com.example.game", &token, "alice")).await.unwrap().into_inner();
        assert_eq!(again.verdict(), Verdict::Valid, "{db_name}: the owner may verify again");
        assert_eq!((ledger_of(&again).claim(), ledger_of(&again).seen_before), (Claim::Owner, true), "{db_name}");
        assert_eq!(ledger_of(&again).first_seen_time, ledger_of(&first).first_seen_time, "{db_name}");
        assert_eq!(ledger_of(&again).purchase_id, ledger_of(&first).purchase_id, "{db_name}");

        let replay = client.verify(verify_for("com.example.game", &token, "bob")).await.unwrap().into_inner();
        assert_eq!(replay.verdict(), Verdict::ClaimedByOtherUser, "{db_name}: never a plain valid");
        assert_eq!(ledger_of(&replay).claim(), Claim::OtherUser, "{db_name}");
        assert!(!replay.verdict_reason.contains("alice"), "{db_name}: the owner is not disclosed");

        let anonymous = client.verify(verify_for("com.example.game", &token, "")).await.unwrap().into_inner();
        assert_eq!(ledger_of(&anonymous).claim(), Claim::NoUser, "{db_name}");

        // Not found is recorded too (a fraud signal), but nobody owns it.
        let forged = client.verify(verify_for("com.example.game", &unique("notfound"), "bob")).await.unwrap();
        let forged = forged.into_inner();
        assert_eq!(forged.verdict(), Verdict::NotFound, "{db_name}");
        assert_eq!(ledger_of(&forged).claim(), Claim::NotClaimable, "{db_name}");

        // The same purchase in another app is another purchase.
        let other_app = client.verify(verify_for("com.example.other", &token, "bob")).await.unwrap().into_inner();
        assert_eq!(other_app.verdict(), Verdict::Valid, "{db_name}");
    }
}

#[tokio::test]
async fn the_transfer_and_share_policies_apply_per_app() {
    for db in Db::both() {
        let db_name = db.name();
        let sandbox = Sandbox::new();
        sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libiapd_plugin_sandbox.so");
        let config = sandbox.write_config(
            "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n\n[ledger]\n\
             apps = { \"com.example.transfer\" = { claims = \"transfer\" }, \"com.example.share\" = { claims = \"share\" } }\n",
        );
        let server = db.start_with(Some(&config), &[]);
        let mut client = server.client().await;
        let token = unique("purchased");

        client.verify(verify_for("com.example.transfer", &token, "alice")).await.unwrap();
        let moved = client.verify(verify_for("com.example.transfer", &token, "bob")).await.unwrap().into_inner();
        assert_eq!((moved.verdict(), ledger_of(&moved).claim()), (Verdict::Valid, Claim::Transferred), "{db_name}");
        let back = client.verify(verify_for("com.example.transfer", &token, "bob")).await.unwrap().into_inner();
        assert_eq!(ledger_of(&back).claim(), Claim::Owner, "{db_name}: bob owns it now");

        client.verify(verify_for("com.example.share", &token, "alice")).await.unwrap();
        let shared = client.verify(verify_for("com.example.share", &token, "bob")).await.unwrap().into_inner();
        assert_eq!((shared.verdict(), ledger_of(&shared).claim()), (Verdict::Valid, Claim::Shared), "{db_name}");
        let owner = client.verify(verify_for("com.example.share", &token, "alice")).await.unwrap().into_inner();
        assert_eq!(ledger_of(&owner).claim(), Claim::Owner, "{db_name}: alice still owns it");
    }
}

/// Verifies that arrive together are committed together: one purchase
/// verified at once for many users must be decided as if one after another.
#[tokio::test]
async fn verifies_of_one_purchase_committed_together_are_decided_one_after_another() {
    const USERS: usize = 48;
    for db in Db::both() {
        let db_name = db.name();
        let sandbox = Sandbox::new();
        sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libiapd_plugin_sandbox.so");
        let share_app = format!("com.example.{}", unique("share").replace('-', "_"));
        let config = sandbox.write_config(&format!(
            "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n\n[ledger]\napps = {{ \"{share_app}\" = {{ claims = \"share\" }} }}\n"
        ));
        let server = db.start_with(Some(&config), &[]);
        let client = server.client().await;
        for (app, policy) in [("com.example.game", "reject"), (share_app.as_str(), "share")] {
            let token = unique("purchased");
            let mut watcher = client.clone();
            let mut events = watcher
                .watch_events(pb::WatchEventsRequest { app_id: app.into(), ..Default::default() })
                .await
                .unwrap()
                .into_inner();
            let calls: Vec<_> = (0..USERS)
                .map(|index| {
                    let (mut client, request) = (client.clone(), verify_for(app, &token, &format!("user-{index}")));
                    tokio::spawn(async move { client.verify(request).await.unwrap().into_inner() })
                })
                .collect();
            let mut answers = Vec::new();
            for call in calls {
                answers.push(call.await.unwrap());
            }
            let claims: Vec<Claim> = answers.iter().map(|answer| ledger_of(answer).claim()).collect();
            let count = |claim: Claim| claims.iter().filter(|&&each| each == claim).count();
            assert_eq!(count(Claim::New), 1, "{db_name} {policy}: one owner: {claims:?}");
            assert_eq!(answers.iter().filter(|answer| !ledger_of(answer).seen_before).count(), 1, "{db_name} {policy}");
            let ids: std::collections::HashSet<&str> =
                answers.iter().map(|answer| ledger_of(answer).purchase_id.as_str()).collect();
            assert_eq!(ids.len(), 1, "{db_name} {policy}: one purchase");
            let (others, other_verdict, other_event) = match policy {
                "reject" => (count(Claim::OtherUser), Verdict::ClaimedByOtherUser, None),
                _ => (count(Claim::Shared), Verdict::Valid, Some("shared")),
            };
            assert_eq!(others, USERS - 1, "{db_name} {policy}: {claims:?}");
            let verdicts = answers.iter().filter(|answer| answer.verdict() == other_verdict).count();
            assert_eq!(verdicts, if policy == "reject" { USERS - 1 } else { USERS }, "{db_name} {policy}");
            // The events say the same, each once, numbered in order.
            let expected = 1 + other_event.map_or(0, |_| USERS - 1);
            let mut seen = Vec::new();
            while seen.len() < expected {
                let next = tokio::time::timeout(Duration::from_secs(10), events.message()).await.expect("in time");
                seen.push(next.unwrap().unwrap().event.unwrap());
            }
            assert!(seen.windows(2).all(|pair| pair[0].sequence < pair[1].sequence), "{db_name} {policy}");
            assert_eq!(seen[0].kind, "claimed", "{db_name} {policy}");
            assert!(seen[1..].iter().all(|event| Some(event.kind.as_str()) == other_event), "{db_name} {policy}");
            let mut users: Vec<&str> = seen.iter().map(|event| event.user_id.as_str()).collect();
            users.sort();
            users.dedup();
            assert_eq!(users.len(), expected, "{db_name} {policy}: each user's event once");
            // And every user the purchase is shared with holds it.
            if policy == "share" {
                for index in 0..USERS {
                    let mut client = client.clone();
                    let held = client
                        .list_purchases(pb::ListPurchasesRequest {
                            app_id: app.into(),
                            user_id: format!("user-{index}"),
                            ..Default::default()
                        })
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(held.purchases.len(), 1, "{db_name}: user-{index} holds it");
                }
            }
        }
        // (Which is what this test is about only if they were.)
        let logs = server.logs();
        let batched = logs
            .lines()
            .filter(|line| line.contains("recorded a batch"))
            .filter_map(|line| line.split("verifies=").nth(1)?.split_whitespace().next()?.parse::<usize>().ok())
            .any(|verifies| verifies > 1);
        assert!(batched, "{db_name}: no batch held two verifies:\n{logs}");
    }
}

#[tokio::test]
async fn every_answered_verify_is_in_the_ledger_after_kill_9() {
    for db in Db::both() {
        let db_name = db.name();
        let server = db.start(&[]);
        let client = server.client().await;
        // Hundreds of calls in flight when the server is killed; those
        // answered VALID must all be owned by alice after the restart.
        let calls: Vec<_> = (0..300)
            .map(|index| {
                let mut client = client.clone();
                let token = unique(&format!("slow-{}", index % 50 * 20));
                tokio::spawn(async move {
                    let answer = client.verify(verify_for("com.example.game", &token, "alice")).await;
                    (token, answer)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let pid = server.pid().to_string();
        assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
        let mut answered = Vec::new();
        for call in calls {
            let (token, answer) = call.await.unwrap();
            if let Ok(answer) = answer
                && answer.get_ref().verdict() == Verdict::Valid
            {
                answered.push(token);
            }
        }
        assert!(!answered.is_empty(), "{db_name}: some calls were answered before the kill");

        let restarted = db.start(&[]);
        let mut client = restarted.client().await;
        for token in &answered {
            let replay = client.verify(verify_for("com.example.game", token, "bob")).await.unwrap().into_inner();
            assert_eq!(
                replay.verdict(),
                Verdict::ClaimedByOtherUser,
                "{db_name}: {token} was recorded before its answer"
            );
        }
    }
}

#[tokio::test]
async fn two_replicas_racing_to_claim_one_purchase_end_with_one_owner() {
    let db = Db::postgres();
    let (one, two) = (db.start(&[]), db.start(&[]));
    let (client_one, client_two) = (one.client().await, two.client().await);
    let races: Vec<_> = (0..40)
        .map(|_| {
            let token = unique("purchased");
            let (mut one, mut two) = (client_one.clone(), client_two.clone());
            tokio::spawn(async move {
                let alice = one.verify(verify_for("com.example.game", &token, "alice"));
                let bob = two.verify(verify_for("com.example.game", &token, "bob"));
                let (alice, bob) = tokio::join!(alice, bob);
                [alice.unwrap().into_inner().verdict(), bob.unwrap().into_inner().verdict()]
            })
        })
        .collect();
    for race in races {
        let mut verdicts = race.await.unwrap();
        verdicts.sort_by_key(|verdict| *verdict as i32);
        assert_eq!(verdicts, [Verdict::Valid, Verdict::ClaimedByOtherUser], "exactly one owner");
    }
}

#[tokio::test]
async fn an_unreachable_database_stops_start_up_naming_the_url_without_its_password() {
    let logs = Server::try_start(None, &[("IAPD_LEDGER__URL", "postgres://iapd:hunter2@127.0.0.1:1/ledger")])
        .err()
        .expect("start-up fails");
    assert!(logs.contains("cannot open the ledger at postgres://iapd:REDACTED@127.0.0.1:1/ledger"), "{logs}");
    assert!(!logs.contains("hunter2"), "{logs}");
}

#[tokio::test]
async fn a_lost_database_answers_unavailable_and_the_server_recovers_when_it_returns() {
    let db = Db::postgres();
    let Db::Postgres(name) = &db else { unreachable!() };
    let server = db.start(&[]);
    let mut client = server.client().await;
    client.verify(verify_for("com.example.game", &unique("purchased"), "alice")).await.unwrap();

    psql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"));
    psql(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"));
    let token = unique("purchased");
    let status = client.verify(verify_for("com.example.game", &token, "alice")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "never a success without a record: {status:?}");
    assert_eq!(error_info(&status), Some(("LEDGER_UNAVAILABLE".to_owned(), "iapd".to_owned())));
    let channel = tonic::transport::Channel::from_shared(server.url()).unwrap().connect().await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    let ledger_health = || tonic_health::pb::HealthCheckRequest { service: "iapd.v1.Ledger".into() };
    let wait_for = |expected: i32| {
        let mut health = health.clone();
        async move {
            for _ in 0..100 {
                if health.check(ledger_health()).await.unwrap().into_inner().status == expected {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("the ledger's health never became {expected}");
        }
    };
    wait_for(2).await; // NOT_SERVING

    psql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    wait_for(1).await; // SERVING
    let answer = client.verify(verify_for("com.example.game", &token, "alice")).await.unwrap().into_inner();
    assert_eq!(answer.verdict(), Verdict::Valid, "the server reconnects by itself");
    assert!(!ledger_of(&answer).seen_before, "the refused call recorded nothing");
}

#[test]
fn migrate_applies_the_schema_and_is_idempotent() {
    for db in Db::both() {
        let (name, value) = db.env();
        for _ in 0..2 {
            let (ok, stdout, stderr) = crate::support::run_iapd(&["migrate"], &[(name, &value)]);
            assert!(ok, "{}: {stderr}", db.name());
            assert!(stdout.contains("migrations applied"), "{stdout}");
        }
    }
}

fn grant(purchase_id: &str, user_id: &str) -> pb::GrantRequest {
    pb::GrantRequest { purchase_id: purchase_id.into(), user_id: user_id.into() }
}

fn confirm(grant_id: &str) -> pb::ConfirmGrantRequest {
    pb::ConfirmGrantRequest { grant_id: grant_id.into() }
}

async fn verified_purchase_id(client: &mut Client, token: &str, user_id: &str) -> String {
    let answer = client.verify(verify_for("com.example.game", token, user_id)).await.unwrap().into_inner();
    ledger_of(&answer).purchase_id.clone()
}

type Client = pb::purchase_service_client::PurchaseServiceClient<tonic::transport::Channel>;

#[tokio::test]
async fn a_purchase_is_granted_once_to_its_owner_and_never_after_a_consume_without_grant() {
    for db in Db::both() {
        let db_name = db.name();
        let server = db.start(&[]);
        let mut client = server.client().await;
        let purchase = verified_purchase_id(&mut client, &unique("purchased"), "alice").await;

        let status = client.grant(grant(&purchase, "bob")).await.unwrap_err();
        assert_eq!(error_info(&status), Some(("NOT_PURCHASE_OWNER".into(), "iapd".into())), "{db_name}");
        assert_eq!(status.code(), Code::PermissionDenied);

        let started = client.grant(grant(&purchase, "alice")).await.unwrap().into_inner();
        assert_eq!(started.state(), pb::GrantState::Started, "{db_name}");
        let retried = client.grant(grant(&purchase, "alice")).await.unwrap().into_inner();
        assert_eq!((retried.state(), &retried.grant_id), (pb::GrantState::Pending, &started.grant_id), "{db_name}");
        assert_eq!(retried.started_time, started.started_time);
        assert!(!client.confirm_grant(confirm(&started.grant_id)).await.unwrap().into_inner().already_confirmed);
        assert!(client.confirm_grant(confirm(&started.grant_id)).await.unwrap().into_inner().already_confirmed);
        let after = client.grant(grant(&purchase, "alice")).await.unwrap().into_inner();
        assert_eq!(after.state(), pb::GrantState::Confirmed, "{db_name}: never granted again");

        // Only a valid purchase is granted, and not once consumed without a grant.
        let pending = verified_purchase_id(&mut client, &unique("pending"), "alice").await;
        let status = client.grant(grant(&pending, "alice")).await.unwrap_err();
        assert_eq!(error_info(&status), Some(("PURCHASE_NOT_GRANTABLE".into(), "iapd".into())), "{db_name}");
        let token = unique("purchased");
        let consumed = verified_purchase_id(&mut client, &token, "alice").await;
        client.consume(consume_for(&token)).await.unwrap();
        let status = client.grant(grant(&consumed, "alice")).await.unwrap_err();
        assert_eq!(error_info(&status), Some(("CONSUMED_WITHOUT_GRANT".into(), "iapd".into())), "{db_name}");

        // Ids that are not the ledger's are refused by field; unknown ones are not found.
        let status = client.grant(grant("nope", "alice")).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("purchase_id:"), "{}", status.message());
        let status = client.grant(grant(&format!("pur_{}", "0".repeat(32)), "alice")).await.unwrap_err();
        assert_eq!(error_info(&status), Some(("PURCHASE_NOT_IN_LEDGER".into(), "iapd".into())));
        let status = client.confirm_grant(confirm(&format!("grt_{}", "0".repeat(32)))).await.unwrap_err();
        assert_eq!(error_info(&status), Some(("GRANT_NOT_FOUND".into(), "iapd".into())));
        let status = client.grant(grant(&purchase, "")).await.unwrap_err();
        assert!(status.message().starts_with("user_id:"), "{}", status.message());
    }
}

#[tokio::test]
async fn grants_need_the_ledger() {
    let server = Server::start(None, &[("IAPD_LEDGER__ENABLED", "false")]);
    let mut client = server.client().await;
    let answer = client.verify(verify_for("com.example.game", &unique("purchased"), "alice")).await.unwrap();
    assert!(answer.get_ref().ledger.is_none(), "Verify works without the ledger and says nothing of it");
    let status = client.grant(grant(&format!("pur_{}", "0".repeat(32)), "alice")).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(error_info(&status), Some(("LEDGER_DISABLED".into(), "iapd".into())));
}

#[tokio::test]
async fn two_replicas_racing_to_grant_start_one_grant() {
    let db = Db::postgres();
    let (one, two) = (db.start(&[]), db.start(&[]));
    let mut first = one.client().await;
    let purchase = verified_purchase_id(&mut first, &unique("purchased"), "alice").await;
    let clients = [one.client().await, two.client().await];
    let racers: Vec<_> = (0..20)
        .map(|index| {
            let mut client = clients[index % 2].clone();
            let purchase = purchase.clone();
            tokio::spawn(async move { client.grant(grant(&purchase, "alice")).await.unwrap().into_inner() })
        })
        .collect();
    let mut started = 0;
    let mut ids = std::collections::BTreeSet::new();
    for racer in racers {
        let answer = racer.await.unwrap();
        started += usize::from(answer.state() == pb::GrantState::Started);
        ids.insert(answer.grant_id);
    }
    assert_eq!((started, ids.len()), (1, 1), "one grant, started once");
}

/// The README's grant protocol, run by a backend (a Python program with its
/// own SQLite database) that is killed right after each step and run again:
/// the coins are granted exactly once and the purchase is consumed.
#[test]
fn a_backend_killed_at_any_step_grants_exactly_once() {
    let python = crate::support::tool("python");
    let stubs = tempfile::tempdir().unwrap();
    crate::clients::python_stubs(&python, stubs.path(), &["iapd/v1/iapd.proto".into()]);
    let script = crate::support::root().join("tests/fixtures/python/grant_client.py");
    for db in Db::both() {
        let server = db.start(&[]);
        let backend = tempfile::tempdir().unwrap();
        let backend_db = backend.path().join("backend.sqlite3");
        let run = |token: &str, user: &str, crash_after: Option<&str>| {
            let mut command = Command::new(&python);
            command.arg(&script).arg(server.address.to_string()).arg(&backend_db).arg(token).arg(user);
            command.args(crash_after).env("PYTHONPATH", stubs.path()).env("PYTHONDONTWRITEBYTECODE", "1");
            command.output().expect("run the backend")
        };
        for (index, step) in ["verify", "grant", "content", "confirm", "consume"].into_iter().enumerate() {
            let token = unique("purchased");
            let user = format!("user-{index}");
            let crashed = run(&token, &user, Some(step));
            assert_eq!(crashed.status.code(), Some(137), "{}: dies after {step}: {crashed:?}", db.name());
            for attempt in 0..2 {
                let resumed = run(&token, &user, None);
                assert!(
                    resumed.status.success() && String::from_utf8_lossy(&resumed.stdout).contains("done"),
                    "{}: after a crash after {step}, run {attempt}: {resumed:?}",
                    db.name()
                );
            }
        }
        let granted = Command::new(&python)
            .arg("-c")
            .arg("import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('SELECT user, SUM(coins), COUNT(*) FROM granted GROUP BY user ORDER BY user').fetchall())")
            .arg(&backend_db)
            .output()
            .unwrap();
        let rows = String::from_utf8_lossy(&granted.stdout);
        assert_eq!(
            rows.trim(),
            "[('user-0', 100, 1), ('user-1', 100, 1), ('user-2', 100, 1), ('user-3', 100, 1), ('user-4', 100, 1)]",
            "{}: each user got the coins once",
            db.name()
        );
    }
}

#[tokio::test]
async fn entitlements_and_purchases_answer_what_a_user_may_use_now() {
    for db in Db::both() {
        let db_name = db.name();
        let sandbox = Sandbox::new();
        sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libiapd_plugin_sandbox.so");
        let config = sandbox.write_config(
            "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n\n[ledger.apps.\"com.example.game\".entitlements]\n\
             premium = [\"remove_ads\", \"vip_*\"]\ncoins = [\"coins_100\"]\n",
        );
        let server = db.start_with(Some(&config), &[]);
        let mut client = server.client().await;
        let verify = |product: &str, token: String| pb::VerifyRequest {
            store: "sandbox".into(),
            app_id: "com.example.game".into(),
            product_id: product.into(),
            proof: crate::support::token(&token),
            user_id: "alice".into(),
        };
        let entitlements =
            |user: &str| pb::GetEntitlementsRequest { app_id: "com.example.game".into(), user_id: user.into() };
        let active = |answer: &pb::GetEntitlementsResponse, name: &str| {
            answer.entitlements.iter().find(|entitlement| entitlement.name == name).expect("configured").active
        };

        let none = client.get_entitlements(entitlements("alice")).await.unwrap().into_inner();
        assert!(!active(&none, "premium") && !active(&none, "coins"), "{db_name}: nothing bought yet");

        client.verify(verify("vip_monthly", unique("expired"))).await.unwrap();
        client.verify(verify("remove_ads", unique("refunded"))).await.unwrap();
        let lapsed = client.get_entitlements(entitlements("alice")).await.unwrap().into_inner();
        assert!(!active(&lapsed, "premium"), "{db_name}: an expired or refunded purchase grants nothing");

        client.verify(verify("vip_monthly", unique("purchased"))).await.unwrap();
        let coins = unique("purchased");
        client.verify(verify("coins_100", coins.clone())).await.unwrap();
        let now = client.get_entitlements(entitlements("alice")).await.unwrap().into_inner();
        let premium = now.entitlements.iter().find(|entitlement| entitlement.name == "premium").unwrap();
        assert!(premium.active, "{db_name}: vip_* grants premium");
        assert_eq!(premium.product_ids, ["vip_monthly"], "{db_name}");
        assert!(premium.expiry_time.is_some(), "{db_name}: a subscription's premium ends");
        assert!(active(&now, "coins"), "{db_name}");
        assert_eq!(now.active_product_ids, ["coins_100", "vip_monthly"], "{db_name}");
        let bob = client.get_entitlements(entitlements("bob")).await.unwrap().into_inner();
        assert!(!active(&bob, "premium"), "{db_name}: entitlements are per user");

        client.consume(consume_for(&coins)).await.unwrap();
        let spent = client.get_entitlements(entitlements("alice")).await.unwrap().into_inner();
        assert!(!active(&spent, "coins"), "{db_name}: a consumed purchase is used up");

        // Every purchase alice holds, one page at a time.
        let mut seen = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = client
                .list_purchases(pb::ListPurchasesRequest {
                    app_id: "com.example.game".into(),
                    user_id: "alice".into(),
                    page_size: 1,
                    page_token: page_token.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            seen.extend(
                page.purchases.into_iter().map(|purchase| (purchase.product_id, purchase.active, purchase.consumed)),
            );
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        seen.sort();
        // The expired and refunded ones were never claimed (only a valid or
        // pending purchase is), so they are nobody's.
        assert_eq!(seen, [("coins_100".to_owned(), false, true), ("vip_monthly".to_owned(), true, false)], "{db_name}");
        for tampered in ["p1.pur_zz", "garbage", "p1.pur_00"] {
            let status = client
                .list_purchases(pb::ListPurchasesRequest {
                    app_id: "com.example.game".into(),
                    user_id: "alice".into(),
                    page_size: 1,
                    page_token: tampered.into(),
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{db_name}: {tampered}");
            assert!(status.message().starts_with("page_token:"), "{}", status.message());
        }
        let status = client.get_entitlements(entitlements(&"u".repeat(300))).await.unwrap_err();
        assert!(status.message().starts_with("user_id:"), "{}", status.message());
    }
}

#[test]
fn an_entitlement_that_names_no_product_stops_start_up_with_its_key() {
    let sandbox = Sandbox::new();
    sandbox.add_plugin(&built_plugin("iapd-plugin-sandbox"), "libiapd_plugin_sandbox.so");
    let config = sandbox.write_config(
        "[stores.sandbox]\nplugin = \"iapd_plugin_sandbox\"\n\n[ledger.apps.\"com.example.game\".entitlements]\npremium = []\n",
    );
    let (ok, _, stderr) = crate::support::run_iapd(&["--config", &config.display().to_string(), "check-config"], &[]);
    assert!(!ok);
    assert!(stderr.contains("ledger.apps.com.example.game.entitlements.premium"), "{stderr}");
}

fn watch(app_id: &str, after_cursor: &str) -> pb::WatchEventsRequest {
    pb::WatchEventsRequest {
        app_id: app_id.into(),
        user_id: String::new(),
        kinds: vec!["claimed".into()],
        after_cursor: after_cursor.into(),
    }
}

/// The next `count` events of a stream, each within 10 s.
async fn next_events(stream: &mut tonic::Streaming<pb::WatchEventsResponse>, count: usize) -> Vec<pb::LedgerEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("an event in time");
        events.push(next.unwrap().expect("the stream stays open").event.unwrap());
    }
    events
}

#[tokio::test]
async fn events_reach_every_subscriber_on_every_replica_in_one_order_and_resume_from_a_cursor() {
    for db in Db::both() {
        let db_name = db.name();
        // Two replicas share a PostgreSQL ledger; SQLite is one process's.
        let servers = match db {
            Db::Postgres(_) => vec![db.start(&[]), db.start(&[])],
            Db::Sqlite(_) => vec![db.start(&[])],
        };
        let app = format!("com.example.{}", unique("events").replace('-', "_"));
        let mut subscribers = Vec::new();
        for index in 0..10 {
            let mut client = servers[index % servers.len()].client().await;
            subscribers.push(client.watch_events(watch(&app, "")).await.unwrap().into_inner());
        }
        let mut writers = Vec::new();
        for server in &servers {
            writers.push(server.client().await);
        }
        let mut tokens = Vec::new();
        for index in 0..8 {
            let token = unique("purchased");
            let count = writers.len();
            let writer = &mut writers[index % count];
            writer.verify(verify_for(&app, &token, &format!("user-{index}"))).await.unwrap();
            tokens.push(token);
        }
        let mut first_seen: Option<Vec<(i64, String)>> = None;
        for subscriber in &mut subscribers {
            let events = next_events(subscriber, 8).await;
            let order: Vec<(i64, String)> =
                events.iter().map(|event| (event.sequence, event.user_id.clone())).collect();
            assert!(order.windows(2).all(|pair| pair[0].0 < pair[1].0), "{db_name}: in order: {order:?}");
            assert!(events.iter().all(|event| event.kind == "claimed" && event.app_id == app), "{db_name}");
            match &first_seen {
                None => first_seen = Some(order),
                Some(seen) => assert_eq!(&order, seen, "{db_name}: every subscriber sees one order"),
            }
        }
        let seen = first_seen.unwrap();
        // A subscriber that left after the fourth event resumes from its cursor.
        let cursor = format!("e1.{}", seen[3].0);
        drop(subscribers);
        let mut resumed = writers[0].watch_events(watch(&app, &cursor)).await.unwrap().into_inner();
        let rest = next_events(&mut resumed, 4).await;
        let rest: Vec<(i64, String)> = rest.iter().map(|event| (event.sequence, event.user_id.clone())).collect();
        assert_eq!(rest, seen[4..], "{db_name}: the rest, none twice");
        let token = unique("purchased");
        let last = writers.len() - 1;
        writers[last].verify(verify_for(&app, &token, "late")).await.unwrap();
        let late = next_events(&mut resumed, 1).await;
        assert_eq!(late[0].user_id, "late", "{db_name}: and new ones as they commit");

        let status = writers[0].watch_events(watch(&app, "e1.x")).await.unwrap_err();
        assert!(status.message().starts_with("after_cursor:"), "{}", status.message());
        let mut bad_kind = watch(&app, "");
        bad_kind.kinds = vec!["nope".into()];
        let status = writers[0].watch_events(bad_kind).await.unwrap_err();
        assert!(status.message().starts_with("kinds:"), "{}", status.message());
    }
}

#[tokio::test]
async fn final_purchases_are_answered_from_the_ledger_while_fresh_and_claims_still_apply() {
    for db in Db::both() {
        let db_name = db.name();
        let server = db.start(&[]);
        let mut client = server.client().await;
        let token = unique("purchased");
        let first = client.verify(verify_for("com.example.game", &token, "alice")).await.unwrap().into_inner();
        assert_eq!(first.source(), pb::AnswerSource::Store, "{db_name}");
        client.consume(consume_for(&token)).await.unwrap();
        let consumed = client.verify(verify_for("com.example.game", &token, "alice")).await.unwrap().into_inner();
        assert_eq!(consumed.source(), pb::AnswerSource::Ledger, "{db_name}: a consumed purchase is final");
        assert_eq!(consumed.purchase.as_ref().unwrap().consumption_state(), pb::ConsumptionState::Consumed);
        assert_eq!(ledger_of(&consumed).purchase_id, ledger_of(&first).purchase_id, "{db_name}: the same purchase");
        assert_eq!(ledger_of(&consumed).claim(), Claim::Owner, "{db_name}");
        assert!(consumed.store_checked_time.is_some() && consumed.verdict_reason.contains("ledger"), "{db_name}");
        let replay = client.verify(verify_for("com.example.game", &token, "bob")).await.unwrap().into_inner();
        assert_eq!(replay.verdict(), Verdict::ClaimedByOtherUser, "{db_name}: claims hold for ledger answers");

        let refunded = unique("refunded");
        let asked = client.verify(verify_for("com.example.game", &refunded, "alice")).await.unwrap().into_inner();
        assert_eq!((asked.verdict(), asked.source()), (Verdict::Refunded, pb::AnswerSource::Store), "{db_name}");
        let known = client.verify(verify_for("com.example.game", &refunded, "alice")).await.unwrap().into_inner();
        assert_eq!((known.verdict(), known.source()), (Verdict::Refunded, pb::AnswerSource::Ledger), "{db_name}");

        let open = unique("purchased");
        client.verify(verify_for("com.example.game", &open, "alice")).await.unwrap();
        let again = client.verify(verify_for("com.example.game", &open, "alice")).await.unwrap().into_inner();
        assert_eq!(again.source(), pb::AnswerSource::Store, "{db_name}: a purchase that can still change is asked");
    }
    // With no freshness, the store is always asked.
    let server = Server::start(None, &[("IAPD_LEDGER__FINAL_STATE_FRESHNESS_MS", "0")]);
    let mut client = server.client().await;
    let refunded = unique("refunded");
    client.verify(verify_for("com.example.game", &refunded, "alice")).await.unwrap();
    let again = client.verify(verify_for("com.example.game", &refunded, "alice")).await.unwrap().into_inner();
    assert_eq!(again.source(), pb::AnswerSource::Store);
}

/// The Google Play emulator, whose purchases change state as a test says,
/// and a config pointing iapd's Google Play store at it with these `[ledger]`
/// settings.
struct PlayLedger {
    emulator: std::sync::Arc<iapd_emulators::google_play::GooglePlay>,
    config: std::path::PathBuf,
    _running: iapd_emulators::Running,
    _sandbox: Sandbox,
}

const PACKAGE: &str = "com.example.game";

impl PlayLedger {
    fn start(ledger: &str) -> PlayLedger {
        let configured = crate::google_play::configured(&format!("\n[ledger]\n{ledger}\n"));
        PlayLedger {
            emulator: configured.emulator,
            config: configured.config,
            _running: configured.running,
            _sandbox: configured.sandbox,
        }
    }

    /// Puts a purchase of `product` with these `ProductPurchase` fields in
    /// the store (replacing one with the same token).
    fn seed(&self, token: &str, product: &str, fields: serde_json::Value) {
        let serde_json::Value::Object(fields) = fields else { panic!("fields are an object") };
        self.emulator.add_purchase(iapd_emulators::google_play::SeedPurchase {
            package_name: PACKAGE.into(),
            product_id: product.into(),
            purchase_token: token.into(),
            fields,
        });
    }

    fn acknowledged(&self, token: &str) -> bool {
        self.emulator.purchase(token).unwrap()["acknowledgementState"] == 1
    }
}

fn play_verify(product: &str, purchase_token: &str, user: &str) -> pb::VerifyRequest {
    pb::VerifyRequest {
        store: "google-play".into(),
        app_id: PACKAGE.into(),
        product_id: product.into(),
        proof: crate::support::token(purchase_token),
        user_id: user.into(),
    }
}

/// A paid purchase, bought `age_ms` ago, not acknowledged yet.
fn paid(age_ms: i64) -> serde_json::Value {
    let bought = iapd::ledger::now_ms() - age_ms;
    serde_json::json!({
        "purchaseTimeMillis": bought.to_string(), "purchaseState": 0, "consumptionState": 0,
        "acknowledgementState": 0, "orderId": unique("GPA.3301"), "quantity": 1, "refundableQuantity": 1,
    })
}

/// Events of `app` from the start, until `until` holds of those seen, within 10 s.
async fn events_until(
    client: &mut Client,
    app: &str,
    until: impl Fn(&[pb::LedgerEvent]) -> bool,
) -> Vec<pb::LedgerEvent> {
    let request = pb::WatchEventsRequest { app_id: app.into(), ..Default::default() };
    let mut stream = client.watch_events(request).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while !until(&seen) {
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
        let next = next.unwrap_or_else(|_| panic!("events in time; so far: {seen:?}"));
        seen.push(next.unwrap().unwrap().event.unwrap());
    }
    seen
}

#[tokio::test]
async fn a_refund_seen_later_revokes_what_the_purchase_granted() {
    for db in Db::both() {
        let db_name = db.name();
        let play = PlayLedger::start("");
        let server = db.start_with(Some(&play.config), &[]);
        let mut client = server.client().await;
        let (granted, started) = (unique("gp-granted"), unique("gp-started"));
        play.seed(&granted, "remove_ads", paid(60_000));
        play.seed(&started, "remove_ads", paid(60_000));
        let mut grants = Vec::new();
        for token in [&granted, &started] {
            let answer = client.verify(play_verify("remove_ads", token, "alice")).await.unwrap().into_inner();
            assert_eq!(answer.verdict(), Verdict::Valid, "{db_name}");
            let purchase_id = ledger_of(&answer).purchase_id.clone();
            let grant = client.grant(grant(&purchase_id, "alice")).await.unwrap().into_inner();
            grants.push((purchase_id, grant.grant_id));
        }
        client.confirm_grant(confirm(&grants[0].1)).await.unwrap();
        let entitled = |answer: &pb::GetEntitlementsResponse| answer.active_product_ids.clone();
        let asked = pb::GetEntitlementsRequest { app_id: PACKAGE.into(), user_id: "alice".into() };
        let before = client.get_entitlements(asked.clone()).await.unwrap().into_inner();
        assert_eq!(entitled(&before), ["remove_ads"], "{db_name}");

        // Google refunds both: the purchases say so (refundableQuantity 0).
        for token in [&granted, &started] {
            let mut refunded = serde_json::Value::Object(play.emulator.purchase(token).unwrap());
            refunded["refundableQuantity"] = 0.into();
            play.seed(token, "remove_ads", refunded);
            let answer = client.verify(play_verify("remove_ads", token, "alice")).await.unwrap().into_inner();
            assert_eq!(answer.verdict(), Verdict::Refunded, "{db_name}");
        }
        let events = events_until(&mut client, PACKAGE, |seen| {
            seen.iter().filter(|event| event.kind == "grant_revoked").count() == 2
        })
        .await;
        let kinds: Vec<(&str, &str)> =
            events.iter().map(|event| (event.kind.as_str(), event.purchase_id.as_str())).collect();
        for (purchase_id, grant_id) in &grants {
            assert!(kinds.contains(&("refunded", purchase_id)), "{db_name}: {kinds:?}");
            let revoked =
                events.iter().find(|event| event.kind == "grant_revoked" && &event.purchase_id == purchase_id);
            let revoked = revoked.unwrap_or_else(|| panic!("{db_name}: {kinds:?}"));
            assert_eq!((revoked.user_id.as_str(), revoked.detail.as_str()), ("alice", grant_id.as_str()), "{db_name}");
            // Asking again says so; the grant stays revoked.
            let again = client.grant(grant(purchase_id, "alice")).await.unwrap().into_inner();
            assert_eq!(again.state(), pb::GrantState::Revoked, "{db_name}");
        }
        // A grant that was started but not confirmed is not to be given now.
        let status = client.confirm_grant(confirm(&grants[1].1)).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{db_name}");
        assert_eq!(error_info(&status), Some(("GRANT_REVOKED".into(), "iapd".into())), "{db_name}");
        // The confirmed one answers as confirmed before; it was revoked after.
        let after = client.get_entitlements(asked).await.unwrap().into_inner();
        assert!(entitled(&after).is_empty(), "{db_name}: {after:?}");
    }
}

/// The acknowledgement counts ListStores gives for Google Play.
async fn acknowledgement_counts(client: &mut Client) -> (u64, u64) {
    let stores = client.list_stores(pb::ListStoresRequest {}).await.unwrap().into_inner().stores;
    let play = stores.iter().find(|store| store.id == "google-play").unwrap();
    let counts = play.acknowledgements.expect("counts from the ledger");
    (counts.unacknowledged, counts.at_risk)
}

/// Waits until the store says `token` is acknowledged, at most 15 s.
async fn until_acknowledged(play: &PlayLedger, token: &str) {
    for _ in 0..150 {
        if play.acknowledged(token) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{token} was not acknowledged in time");
}

#[tokio::test]
async fn unacknowledged_purchases_are_counted_and_acknowledged_by_policy_before_google_refunds_them() {
    const DAY: i64 = 86_400_000;
    for db in Db::both() {
        let db_name = db.name();
        let play = PlayLedger::start("apps = { \"com.example.game\" = { acknowledge = \"before_deadline\" } }");
        let server = db.start_with(Some(&play.config), &[]);
        let mut client = server.client().await;
        assert_eq!(acknowledgement_counts(&mut client).await, (0, 0), "{db_name}");

        // Bought an hour ago: due in 71 hours, acknowledged a day before
        // that (the default margin), so for now only counted.
        let fresh = unique("gp-fresh");
        play.seed(&fresh, "remove_ads", paid(3_600_000));
        client.verify(play_verify("remove_ads", &fresh, "alice")).await.unwrap();
        assert_eq!(acknowledgement_counts(&mut client).await, (1, 0), "{db_name}");
        // Bought 2.5 days ago: due in half a day, past the margin, so iapd
        // acknowledges it now.
        let old = unique("gp-old");
        play.seed(&old, "remove_ads", paid(5 * DAY / 2));
        client.verify(play_verify("remove_ads", &old, "bob")).await.unwrap();
        until_acknowledged(&play, &old).await;
        let events =
            events_until(&mut client, PACKAGE, |seen| seen.iter().any(|event| event.kind == "acknowledged")).await;
        let acknowledged = events.iter().find(|event| event.kind == "acknowledged").unwrap();
        assert_eq!(acknowledged.user_id, "bob", "{db_name}");
        assert_eq!(acknowledgement_counts(&mut client).await, (1, 0), "{db_name}: the fresh one is left");
        assert!(!play.acknowledged(&fresh), "{db_name}: not before its time");
        // A backend that acknowledges first settles it.
        let request = pb::AcknowledgeRequest {
            store: "google-play".into(),
            app_id: PACKAGE.into(),
            product_id: "remove_ads".into(),
            proof: crate::support::token(&fresh),
            developer_payload: String::new(),
        };
        client.acknowledge(request).await.unwrap();
        assert_eq!(acknowledgement_counts(&mut client).await, (0, 0), "{db_name}");
        assert_eq!(play.emulator.count("products.acknowledge"), 2, "{db_name}: one call each");
    }
}

#[tokio::test]
async fn at_risk_purchases_are_counted_for_apps_that_acknowledge_themselves() {
    const DAY: i64 = 86_400_000;
    let db = Db::sqlite();
    let play = PlayLedger::start("");
    let server = db.start_with(Some(&play.config), &[]);
    let mut client = server.client().await;
    for (age, user) in [(DAY / 24, "alice"), (5 * DAY / 2, "bob"), (4 * DAY, "carol")] {
        let token = unique("gp-manual");
        play.seed(&token, "remove_ads", paid(age));
        client.verify(play_verify("remove_ads", &token, user)).await.unwrap();
    }
    // Past its deadline counts as at risk too: Google may refund it any moment.
    assert_eq!(acknowledgement_counts(&mut client).await, (3, 2));
    assert_eq!(play.emulator.count("products.acknowledge"), 0, "manual: iapd acknowledges nothing");
}

#[tokio::test]
async fn replicas_acknowledging_after_verify_acknowledge_each_purchase_once() {
    const PURCHASES: usize = 24;
    let db = Db::postgres();
    let play = PlayLedger::start("apps = { \"com.example.game\" = { acknowledge = \"after_verify\" } }");
    let (one, two) = (db.start_with(Some(&play.config), &[]), db.start_with(Some(&play.config), &[]));
    let clients = [one.client().await, two.client().await];
    let tokens: Vec<String> = (0..PURCHASES).map(|_| unique("gp-auto")).collect();
    let mut calls = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        play.seed(token, "remove_ads", paid(60_000));
        // Each purchase verified on both replicas.
        for client in &clients {
            let (mut client, request) = (client.clone(), play_verify("remove_ads", token, &format!("user-{index}")));
            calls.push(tokio::spawn(async move { client.verify(request).await.unwrap() }));
        }
    }
    for call in calls {
        call.await.unwrap();
    }
    for token in &tokens {
        until_acknowledged(&play, token).await;
    }
    let mut client = clients[0].clone();
    let events = events_until(&mut client, PACKAGE, |seen| {
        seen.iter().filter(|event| event.kind == "acknowledged").count() == PURCHASES
    })
    .await;
    assert_eq!(events.iter().filter(|event| event.kind == "acknowledged").count(), PURCHASES);
    assert_eq!(play.emulator.count("products.acknowledge"), PURCHASES as u64, "one acknowledgement each");
    assert_eq!(acknowledgement_counts(&mut client).await, (0, 0));
}
