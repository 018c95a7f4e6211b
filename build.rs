//! Builds the supervisor program (`src/sys/supervisor/main.rs`), a freestanding Linux
//! executable of a few KiB that the library embeds and executes from memory for the
//! supervised containment tiers.
//!
//! It is compiled with the same `rustc` and linker as the crate, for the same target, with
//! no C library and no dynamic loader (`-nostdlib -static`), so that its start costs an
//! `execve` and nothing more. Only for Linux on x86_64 and aarch64, and not under
//! `--cfg pgroup_portable` or on docs.rs. If it cannot be built, the crate still builds:
//! a cargo warning says why, and the supervised tiers start their supervisor as a fork of
//! the test binary instead (the same guarantees; the cost of the fork grows with the test
//! binary's memory).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCES: [&str; 6] = [
    "src/sys/supervisor/main.rs",
    "src/sys/supervisor/raw/mod.rs",
    "src/sys/supervisor/raw/msg.rs",
    "src/sys/supervisor/raw/signal.rs",
    "src/sys/supervisor/run.rs",
    "src/sys/supervisor/protocol.rs",
];

fn main() {
    // The backend, chosen here once for the whole crate:
    // - `pgroup_linux`: the Linux backend (pidfds, /proc); otherwise the portable one
    //   (macOS, FreeBSD, and Linux under `--cfg pgroup_portable`);
    // - `pgroup_supervised`: the Linux backend on an architecture whose system calls the
    //   supervisor makes itself (x86_64, aarch64): the supervised tiers exist;
    // - `pgroup_image`: the supervisor program was built and is embedded.
    println!("cargo:rustc-check-cfg=cfg(pgroup_linux)");
    println!("cargo:rustc-check-cfg=cfg(pgroup_supervised)");
    println!("cargo:rustc-check-cfg=cfg(pgroup_image)");
    println!("cargo:rerun-if-changed=build.rs");
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-env-changed=DOCS_RS");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let linux =
        var("CARGO_CFG_TARGET_OS") == "linux" && env::var_os("CARGO_CFG_PGROUP_PORTABLE").is_none();
    let supervised = linux && matches!(var("CARGO_CFG_TARGET_ARCH").as_str(), "x86_64" | "aarch64");
    if linux {
        println!("cargo:rustc-cfg=pgroup_linux");
    }
    if supervised {
        println!("cargo:rustc-cfg=pgroup_supervised");
    }
    if !supervised || env::var_os("DOCS_RS").is_some() {
        return;
    }
    match build() {
        Ok(()) => println!("cargo:rustc-cfg=pgroup_image"),
        Err(why) => println!(
            "cargo:warning=pgroup: the supervisor program was not built ({why}); the \
             supervised tiers will fork the test binary for their supervisor instead"
        ),
    }
}

fn build() -> Result<(), String> {
    let out = PathBuf::from(env::var_os("OUT_DIR").ok_or("no OUT_DIR")?);
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").map_err(|_| "no TARGET")?;
    let mut cmd = Command::new(rustc);
    cmd.args(["--edition", "2021", "--crate-type", "bin"])
        .args(["--crate-name", "pgroup_supervisor", "--target", &target])
        .args([
            "-C",
            "panic=abort",
            "-C",
            "opt-level=2",
            "-C",
            "debuginfo=0",
        ])
        .args(["-C", "strip=symbols", "-C", "relocation-model=static"])
        .args(["-C", "target-feature=+crt-static"])
        .args(["-C", "link-arg=-nostartfiles", "-C", "link-arg=-nostdlib"])
        .args([
            "-C",
            "link-arg=-static",
            "-C",
            "link-arg=-Wl,--build-id=none",
        ])
        // The program uses part of the system calls the library shares with it.
        .args(["-A", "dead_code"])
        .arg(SOURCES[0])
        .arg("-o")
        .arg(out.join("pgroup-supervisor"));
    if let Some(linker) = env::var_os("RUSTC_LINKER") {
        let mut flag = std::ffi::OsString::from("linker=");
        flag.push(linker);
        cmd.arg("-C").arg(flag);
    }
    let output = cmd.output().map_err(|e| format!("cannot run rustc: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let first = stderr
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or("rustc failed");
        Err(format!("{}: {first}", output.status))
    }
}
