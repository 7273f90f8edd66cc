//! `ro_connection_string` (SPIRE's name): the entry cache's full load reads from a read
//! replica, every write and every other read stays on the primary. The replica here is the
//! primary's own schema seen through a PostgreSQL role that can only read
//! (`default_transaction_read_only`, SELECT grants only): whatever the server sent it that
//! is not a read fails. A replica that cannot serve is passed over, never fatal.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use sqlx::Executor;
use support::*;

async fn psql(sql: &str) {
    let pool = sqlx::PgPool::connect(&pg_url()).await.unwrap();
    pool.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())))
        .await
        .unwrap();
    pool.close().await;
}

#[test]
fn the_cache_loads_from_a_read_only_replica_and_writes_stay_on_the_primary() {
    let Some(backend) = Backend::postgres() else {
        return;
    };
    let Backend::Postgres { schema } = &backend else {
        unreachable!()
    };
    // the first server migrates the schema and registers entries
    let first = TestServer::start(backend.clone());
    for i in 0..3 {
        first
            .cli(&[
                "entry",
                "create",
                "-spiffeID",
                &format!("spiffe://example.org/w{i}"),
                "-parentID",
                "spiffe://example.org/node",
                "-selector",
                "unix:uid:1000",
            ])
            .expect_ok();
    }
    let role = format!("ro_{:016x}", rand_u64());
    let rt = runtime();
    rt.block_on(psql(&format!(
        "CREATE ROLE {role} LOGIN; \
         ALTER ROLE {role} SET default_transaction_read_only = on; \
         GRANT USAGE ON SCHEMA {schema} TO {role}; \
         GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role};"
    )));
    let base = pg_url();
    let (scheme_host, db) = base.rsplit_once('/').unwrap();
    let host = scheme_host.rsplit_once('@').map_or(scheme_host, |(_, h)| h);
    let ro_url = format!("postgres://{role}@{host}/{db}?options=-c%20search_path%3D{schema}");

    // a second server of the cluster with the replica: it loads from there
    let s = TestServer::start_conf(backend.clone(), |mut c| {
        if let Some(ds) = c.plugins.get_mut("DataStore", "sql") {
            ds.data.put("ro_connection_string", &ro_url);
        }
        c
    });
    let log = s.log();
    assert!(log.contains("read replica attached"), "{log}");
    let load = log
        .lines()
        .find(|l| l.contains("loaded the entry cache"))
        .unwrap_or_default();
    assert!(
        load.contains("replica") && load.contains("entries=3"),
        "the cache was not loaded from the replica: {load}"
    );
    // writes go to the primary (the replica role could not make them), and read back at once
    s.cli(&[
        "entry",
        "create",
        "-spiffeID",
        "spiffe://example.org/after",
        "-parentID",
        "spiffe://example.org/node",
        "-selector",
        "unix:uid:1000",
    ])
    .expect_ok();
    let shown = s.cli(&["entry", "show"]).expect_ok().stdout.clone();
    assert!(shown.contains("spiffe://example.org/after"), "{shown}");
    assert!(shown.contains("Found 4 entries"), "{shown}");
    // an agent of this server attests and is served (its writes, its sync, from the cache)
    let token = join_token(&s, "spiffe://example.org/node");
    let a = TestAgent::start(&s, &token);
    assert!(
        s.cli(&["agent", "count"])
            .expect_ok()
            .stdout
            .contains("1 attested agent")
    );
    drop(a);

    // a replica that cannot serve (a role that does not exist) is passed over with a warning
    let broken = TestServer::start_conf(backend.clone(), |mut c| {
        if let Some(ds) = c.plugins.get_mut("DataStore", "sql") {
            ds.data.put(
                "ro_connection_string",
                format!("postgres://nobody_{role}@{host}/{db}"),
            );
        }
        c
    });
    let log = broken.log();
    assert!(log.contains("the read replica is not usable"), "{log}");
    broken.cli(&["entry", "count"]).expect_ok();

    drop((broken, s, first));
    rt.block_on(psql(&format!("DROP OWNED BY {role}; DROP ROLE {role};")));
}

#[test]
fn sqlite_has_no_replica_and_validate_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("server.conf");
    ServerConf::new("example.org")
        .server("data_dir", dir.path())
        .plugin(
            Plugin::new("DataStore", "sql")
                .set("database_type", "sqlite3")
                .set("connection_string", dir.path().join("ds.sqlite3"))
                .set("ro_connection_string", "x"),
        )
        .plugin(Plugin::new("KeyManager", "memory"))
        .plugin(Plugin::new("NodeAttestor", "join_token"))
        .write(&conf)
        .unwrap();
    let o = Out::from(
        std::process::Command::new(BIN)
            .args(["validate", "-config"])
            .arg(&conf)
            .output()
            .unwrap(),
    );
    o.expect_error("SQLite does not have");
}
