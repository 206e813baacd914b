//! Regressions from trying to break `/database_schema` (issue 17): with a table locked, 110
//! requests whose clients gave up after 1 s left 98 `pg_dump` children blocked, and Postgres
//! ran out of connections for users and for compute_ctl itself.

use crate::support::{self, Compute, Setup, http};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `pg_dump` children of `pid` that are not zombies.
fn dumps_of(pid: u32) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") ")) else { continue };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|v| v.parse::<u32>().ok()));
        if comm == "pg_dump" && ppid == Some(pid) && state != Some("Z") {
            n += 1;
        }
    }
    n
}

fn wait_dumps(c: &Compute, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while dumps_of(c.pid()) != want {
        assert!(
            Instant::now() < deadline,
            "{} pg_dump children, want {want}; log:\n{}",
            dumps_of(c.pid()),
            c.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A running compute with table `locked` held in ACCESS EXCLUSIVE mode by the returned client.
fn locked(name: &str) -> (Setup, Compute, postgres::Client) {
    let s = Setup::new(name);
    let mut c = s.spawn();
    c.wait_running();
    let mut lock = s.client();
    // Two round trips: in one, the CREATE would join the transaction and stay invisible.
    lock.batch_execute("CREATE TABLE locked (x int)").unwrap();
    lock.batch_execute("BEGIN; LOCK TABLE locked").unwrap();
    (s, c, lock)
}

fn ask_schema(port: u16) -> TcpStream {
    let mut st = TcpStream::connect(("127.0.0.1", port)).unwrap();
    st.write_all(b"GET /database_schema?database=postgres HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    st
}

#[test]
fn a_client_that_goes_away_gets_its_pg_dump_killed() {
    let (s, c, _lock) = locked("faults-schema-gone");
    let st = ask_schema(s.http_port);
    wait_dumps(&c, 1);
    drop(st);
    wait_dumps(&c, 0);
    assert!(c.log_text().contains("the client went away; killing pg_dump"), "{}", c.log_text());
}

#[test]
fn at_most_four_dumps_run_at_once_and_the_fifth_gets_429() {
    let (s, c, _lock) = locked("faults-schema-429");
    let waiting: Vec<TcpStream> = (0..4).map(|_| ask_schema(s.http_port)).collect();
    wait_dumps(&c, 4);
    let r = http::get(s.http_port, "/database_schema?database=postgres");
    assert_eq!(r.status, 429, "{}", r.text());
    // compute_ctl's own connections still work.
    assert_eq!(http::get(s.http_port, "/dbs_and_roles").status, 200);
    drop(waiting);
    wait_dumps(&c, 0);
    assert!(support::postmaster_pid(&s.pgdata).is_some());
}

#[test]
fn a_dump_gives_up_on_a_locked_table_with_503() {
    let (s, _c, _lock) = locked("faults-schema-lock-timeout");
    let r = http::get(s.http_port, "/database_schema?database=postgres");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("could not lock a table"), "{}", r.text());
}

#[test]
fn an_empty_database_name_is_a_400() {
    let s = Setup::new("faults-schema-empty");
    let mut c = s.spawn();
    c.wait_running();
    let r = http::get(s.http_port, "/database_schema?database=");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("empty"), "{}", r.text());
}
