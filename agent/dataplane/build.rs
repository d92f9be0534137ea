//! Compiles the tc eBPF programs (agent/bpf/fan.bpf.c) with clang into
//! OUT_DIR/fan.bpf.o, embedded by `src/ebpf` with `include_bytes_aligned!`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const HINT: &str = "apt-get install clang libbpf-dev";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let source = manifest.join("../bpf/fan.bpf.c");
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("fan.bpf.o");
    println!("cargo:rerun-if-changed={}", source.display());
    println!("cargo:rerun-if-env-changed=CLANG");

    // CLANG may name another clang (e.g. clang-14).
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    if Command::new(&clang).arg("--version").output().is_err() {
        panic!("clang not found: {HINT} (or set CLANG to a clang binary)");
    }

    let mut cmd = Command::new(&clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"]);
    // <asm/types.h> lives in the multiarch include directory on Debian.
    if let Some(dir) = multiarch_include() {
        cmd.arg(format!("-I{}", dir.display()));
    }
    cmd.arg("-c").arg(&source).arg("-o").arg(&out);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("clang not found: {HINT} ({e})"));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("bpf/bpf_helpers.h") || stderr.contains("asm/types.h") {
            format!("\nBPF headers missing: {HINT}")
        } else {
            String::new()
        };
        panic!("compiling {} failed:\n{stderr}{hint}", source.display());
    }
}

fn multiarch_include() -> Option<PathBuf> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").ok()?;
    let triple = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "riscv64" => "riscv64-linux-gnu",
        "powerpc64" => "powerpc64le-linux-gnu",
        "s390x" => "s390x-linux-gnu",
        _ => return None,
    };
    let dir = Path::new("/usr/include").join(triple);
    dir.join("asm").is_dir().then_some(dir)
}
