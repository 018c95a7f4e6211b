//! Recipes: the crate in the tests where it is used. Each is compiled and run as a doctest.
//!
//! - [A server with a ready line and a port](#a-server-with-a-ready-line-and-a-port)
//! - [An rstest fixture returning a group](#an-rstest-fixture-returning-a-group)
//! - [A `#[once]` server shared by every test](#a-once-server-shared-by-every-test)
//! - [A CLI whose output is asserted](#a-cli-whose-output-is-asserted)
//! - [An async test (tokio)](#an-async-test-tokio)
//! - [A script the test writes, then runs](#a-script-the-test-writes-then-runs)
//!
//! # A server with a ready line and a port
//!
//! Capture the output, wait for the line that says the server is ready, read the port from
//! it, and (if the line comes before the socket accepts) wait for the port too. Every wait
//! ends early, with the exit status and the output's tail, if the server dies first.
//!
//! ```rust
//! use std::process::Command;
//! use std::time::Duration;
//! use pgroup::{Builder, Stream};
//!
//! // Port 0: the kernel picks a free port, and the server says which. `-u`: Python buffers
//! // its output when it is not a terminal, and a buffered line never arrives.
//! let server = Builder::new()
//!     .capture_output(true)
//!     .spawn(Command::new("python3").args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"]))?;
//! let line = server.wait_for_line(Stream::Stdout, Duration::from_secs(30), |line| {
//!     line.starts_with("Serving HTTP on")
//! })?;
//! // "Serving HTTP on 127.0.0.1 port 43567 (http://127.0.0.1:43567/) ..."
//! let port: u16 = line.split(' ').nth(5).and_then(|p| p.parse().ok()).expect("a port");
//! server.wait_for_tcp(("127.0.0.1", port), Duration::from_secs(30))?;
//! // ... the test talks to 127.0.0.1:port ...
//! drop(server); // SIGTERM, then SIGKILL after the grace period, and the reap
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! A program that cannot be made to write its ready line unbuffered can still be awaited by
//! its port (`wait_for_tcp`), when the port is known in advance.
//!
//! # An rstest fixture returning a group
//!
//! Each test gets its own server; it is torn down when the test ends, also when it fails, and
//! then the server's captured output is printed with the failure.
//!
//! ```rust
//! use std::process::Command;
//! use std::time::Duration;
//! use pgroup::{Builder, SpawnedGroup, Stream};
//! use rstest::{fixture, rstest};
//!
//! struct Server {
//!     group: SpawnedGroup,
//!     port: u16,
//! }
//!
//! #[fixture]
//! fn server() -> Server {
//!     let group = Builder::new()
//!         .capture_output(true)
//!         .spawn(Command::new("python3").args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"]))
//!         .expect("spawn the server");
//!     let line = group
//!         .wait_for_line(Stream::Stdout, Duration::from_secs(30), |l| l.starts_with("Serving HTTP"))
//!         .expect("the server is ready"); // the error has its status and output
//!     let port = line.split(' ').nth(5).and_then(|p| p.parse().ok()).expect("a port");
//!     Server { group, port }
//! }
//!
//! #[rstest]
//! fn serves_a_directory_listing(server: Server) {
//!     assert!(get(server.port, "/").starts_with("HTTP/1.0 200"));
//!     assert_eq!(server.group.try_wait().unwrap(), None); // still running
//! }
//!
//! fn get(port: u16, path: &str) -> String {
//!     use std::io::{Read, Write};
//!     let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
//!     write!(conn, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
//!     let mut response = String::new();
//!     conn.read_to_string(&mut response).unwrap();
//!     response
//! }
//! # fn main() {
//! #     // A doctest runs no #[test]: do what the test does.
//! #     let server = server();
//! #     assert!(get(server.port, "/").starts_with("HTTP/1.0 200"));
//! #     assert_eq!(server.group.try_wait().unwrap(), None);
//! # }
//! ```
//!
//! # A `#[once]` server shared by every test
//!
//! An rstest `#[once]` fixture is built by the first test that asks for it and handed to every
//! test as `&SpawnedGroup`; the `&self` methods (`try_wait`, `wait_timeout`, `signal`,
//! `wait_for_line`, `captured`) work through it, from any test's thread. It lives in a
//! `static` and is never dropped. What ends it:
//!
//! - the [lifeline](crate::lifeline) (on by default, every
//!   tier): when the test binary exits (also on SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGABRT), it
//!   kills every group still alive;
//! - `Containment::Supervised`: also when the test binary is killed with SIGKILL (nextest
//!   after its timeout's grace period), and processes that left the group.
//!
//! So a shared server should be `Supervised`:
//!
//! ```rust
//! use std::process::Command;
//! use std::time::Duration;
//! use pgroup::{Builder, Containment, SpawnedGroup, Stream};
//! use rstest::{fixture, rstest};
//!
//! #[fixture]
//! #[once]
//! fn shared_server() -> SpawnedGroup {
//!     let group = Builder::new()
//!         .containment(Containment::Supervised)
//!         .capture_output(true)
//!         .spawn(Command::new("python3").args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"]))
//!         .expect("spawn the server");
//!     group
//!         .wait_for_line(Stream::Stdout, Duration::from_secs(30), |l| l.starts_with("Serving HTTP"))
//!         .expect("the server is ready");
//!     group
//! }
//!
//! #[rstest]
//! fn the_shared_server_is_alive(shared_server: &SpawnedGroup) {
//!     // Through `&self`: no `&mut` is needed, and other tests may ask at the same time.
//!     assert_eq!(shared_server.try_wait().unwrap(), None, "the shared server died");
//! }
//! # fn main() {
//! #     if !Containment::Supervised.is_available() { return; } // the portable backend
//! #     // A doctest runs no #[test]: do what the tests do, twice, as two tests would.
//! #     for _ in 0..2 {
//! #         let server: &SpawnedGroup = shared_server::get();
//! #         assert_eq!(server.try_wait().unwrap(), None);
//! #     }
//! # }
//! ```
//!
//! # A CLI whose output is asserted
//!
//! [`Run`](crate::Run) (or [`Builder::output`](crate::Builder::output)) runs a command to completion in a group of its own and returns
//! std's `Output`: the status and the complete stdout and stderr. Unlike std's
//! `Command::output()`, it returns when the command exits even if a process it started in the
//! background still holds the pipes (it reads them for a short delay, then tears the group
//! down), so such a CLI neither hangs the test nor outlives it.
//!
//! ```rust
//! use std::process::Command;
//! use std::time::Duration;
//! use pgroup::Run;
//!
//! let output = Run::new()
//!     .input("world\n") // stdin; without it, stdin is null
//!     .timeout(Duration::from_secs(30)) // then an error that carries the partial output
//!     .output(Command::new("sh").args([
//!         "-c",
//!         "sleep 300 & read name; echo \"hello $name\"; echo 'a warning' >&2; exit 3",
//!     ]))?;
//! assert_eq!(output.status.code(), Some(3));
//! assert_eq!(String::from_utf8_lossy(&output.stdout), "hello world\n");
//! assert_eq!(output.stderr, b"a warning\n");
//! // The background `sleep 300` is gone already.
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! `capture_output` is for servers instead: it keeps the last 64 KiB of each stream
//! (`pgroup::CAPTURE_LIMIT`, a cut marked `[… N bytes cut]`) in memory of fixed size, however
//! much the server writes.
//!
//! # An async test (tokio)
//!
//! With the `tokio` feature (off by default; without it the library does not depend on
//! tokio), `pgroup::tokio::SpawnedGroup` (see the `tokio` module) is the same group for `#[tokio::test]`:
//! `Builder::spawn_tokio` (or `SpawnedGroup::spawn`) takes a `tokio::process::Command` and
//! honours every `Builder` option, containment included; `stdin`, `stdout` and `stderr` are
//! tokio's pipes; `wait` and `wait_timeout` are futures woken by the leader's pidfd through the
//! runtime's reactor (no polling, no `spawn_blocking`); so are the readiness waits
//! `wait_for_line` (with `Builder::capture_output`) and `wait_for_tcp`, and `Run::output_tokio`
//! runs a CLI to completion; `shutdown().await` and Drop hand the
//! teardown (SIGTERM, grace period, SIGKILL, reap) to one background thread of the crate, so
//! Drop returns at once (13 µs on average, 0.2 ms at worst, measured) and the runtime keeps
//! running through a stubborn child's grace period. Until that thread reaps the leader the
//! group stays in the lifeline, so a test binary that exits first still kills it. tokio's own
//! children (`tokio::process`) keep their exit statuses: the crate reaps only its leaders, by
//! pid.
//!
//! ```toml
//! [dev-dependencies]
//! pgroup = { version = "0.1", features = ["tokio"] }
//! tokio = { version = "1", features = ["full"] }
//! ```
//!
//! ```rust
//! # macro_rules! run_as_main { // rustdoc runs no #[test]: run the test body as main instead
//! #     (#[tokio::test] async fn $name:ident() -> $ret:ty $body:block) => {
//! #         #[cfg(feature = "tokio")]
//! #         #[tokio::main(flavor = "current_thread")]
//! #         async fn $name() -> $ret $body
//! #     };
//! # }
//! use std::time::Duration;
//! use pgroup::{Builder, Stream};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::TcpStream;
//! use tokio::process::Command;
//!
//! // An echo server in Perl (part of every Debian), which prints its address when it listens.
//! const SERVER: &str = r#"
//!     use IO::Socket::INET;
//!     my $server = IO::Socket::INET->new(Listen => 5, LocalAddr => "127.0.0.1:0") or die;
//!     $| = 1;
//!     print "listening on 127.0.0.1:", $server->sockport, "\n";
//!     while (my $conn = $server->accept) { my $line = <$conn>; print $conn "echo: $line"; close $conn; }
//! "#;
//!
//! # run_as_main! {
//! #[tokio::test]
//! async fn the_server_echoes() -> std::io::Result<()> {
//!     let server = Builder::new()
//!         .capture_output(true)
//!         .spawn_tokio(Command::new("perl").args(["-e", SERVER]))?;
//!
//!     // Wait for the ready line, and read the address from it.
//!     let ready = server
//!         .wait_for_line(Stream::Stdout, Duration::from_secs(10), |l| l.starts_with("listening on "))
//!         .await?;
//!     let address = ready.strip_prefix("listening on ").expect("the address");
//!
//!     let mut conn = TcpStream::connect(address).await?;
//!     conn.write_all(b"hello\n").await?;
//!     let mut answer = String::new();
//!     conn.read_to_string(&mut answer).await?;
//!     assert_eq!(answer, "echo: hello\n");
//!     Ok(())
//!     // `server` drops here: torn down in the background, without blocking the runtime.
//! }
//! # }
//! # fn main() {
//! #     #[cfg(feature = "tokio")]
//! #     the_server_echoes().unwrap();
//! # }
//! ```
//!
//! # A script the test writes, then runs
//!
//! A file that some process holds open for writing cannot be executed: the exec fails with
//! `ETXTBSY` ("Text file busy", [`ErrorKind::ExecutableFileBusy`]). A descriptor the test
//! binary holds is inherited by every process that another test's spawn forks meanwhile
//! (std's, this crate's, any crate's), until that process's own exec; so a script written
//! with `std::fs::write` and run at once fails now and then when tests run in parallel. Keep
//! such scripts in the repository, or write them through a child process, the only one that
//! ever holds the file open for writing:
//!
//! ```
//! use std::io::Write;
//! use std::process::{Command, Stdio};
//!
//! let dir = tempfile::tempdir()?;
//! let script = dir.path().join("serve.sh");
//! let mut writer = Command::new("sh")
//!     .args(["-c", "cat > \"$1\" && chmod 755 \"$1\"", "sh"])
//!     .arg(&script)
//!     .stdin(Stdio::piped())
//!     .spawn()?;
//! writer.stdin.take().unwrap().write_all(b"#!/bin/sh\necho ready\n")?;
//! assert!(writer.wait()?.success()); // stdin was closed when it was dropped
//!
//! let output = pgroup::Run::new().output(&mut Command::new(&script))?;
//! assert_eq!(output.stdout, b"ready\n");
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! [`ErrorKind::ExecutableFileBusy`]: std::io::ErrorKind::ExecutableFileBusy
