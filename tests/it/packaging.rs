//! Packaging: the systemd units verify, their hardening stays at or below exposure 2.0, the
//! sysusers and tmpfiles files apply to an empty root, and every config shipped in `image/` or
//! `systemd/` parses and validates with the daemon's own loader.
//!
//! Runs offline: `systemd-analyze verify --root=` on a scratch root holding a copy of the host's
//! unit directory, `systemd-analyze security --offline=true`; no running systemd is needed.
//! Needs Debian's `systemd` package (scripts/install-deps).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use session_recorder::config::{DEFAULT_CONFIG_PATH, RawConfig};

/// Highest overall exposure `systemd-analyze security` may report for our services.
const EXPOSURE_MAX: f64 = 2.0;

const SERVICES: [&str; 2] = [
    "session-recorder.service",
    "session-recorder-doctor.service",
];
const UNITS: [&str; 3] = [
    "session-recorder.service",
    "session-recorder-doctor.service",
    "session-recorder-doctor.timer",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn systemd_dir() -> PathBuf {
    repo().join("systemd")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run scripts/install-deps for systemd)"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scratch root with the host's stock units (for sysinit.target and friends), our binary at
/// /usr/bin/session-recorder and our units in /etc/systemd/system.
fn scratch_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    copy_dir(
        Path::new("/usr/lib/systemd/system"),
        &r.join("usr/lib/systemd/system"),
    );
    std::fs::create_dir_all(r.join("usr/bin")).expect("usr/bin");
    std::fs::copy(
        env!("CARGO_BIN_EXE_session-recorder"),
        r.join("usr/bin/session-recorder"),
    )
    .expect("copy binary");
    // The image's /bin/kill (procps; merged /usr), which ExecReload runs.
    std::fs::copy("/usr/bin/kill", r.join("usr/bin/kill")).expect("copy kill (procps)");
    std::os::unix::fs::symlink("usr/bin", r.join("bin")).expect("bin -> usr/bin");
    let etc = r.join("etc/systemd/system");
    std::fs::create_dir_all(&etc).expect("etc/systemd/system");
    for unit in UNITS {
        std::fs::copy(systemd_dir().join(unit), etc.join(unit)).expect("copy unit");
    }
    root
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read host unit dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        let meta = std::fs::symlink_metadata(entry.path()).expect("stat");
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(entry.path()).expect("readlink");
            std::os::unix::fs::symlink(link, target).expect("symlink");
        } else if meta.is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[test]
fn units_verify_without_warnings() {
    let root = scratch_root();
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .args(UNITS));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "verify failed: {stderr}");
    // verify reports unknown keys and bad values as warnings with a zero exit: none allowed.
    assert!(stderr.trim().is_empty(), "verify warned:\n{stderr}");
}

#[test]
fn verify_catches_a_broken_unit() {
    // Guards the test above: a typo must show up in verify's output.
    let root = scratch_root();
    let unit = root
        .path()
        .join("etc/systemd/system/session-recorder.service");
    let good = std::fs::read_to_string(&unit).expect("read unit");
    std::fs::write(&unit, good.replace("Type=notify", "Type=notifyy")).expect("write unit");
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.path().display()))
        .arg("session-recorder.service"));
    assert!(
        text(&out.stderr).contains("notifyy"),
        "{}",
        text(&out.stderr)
    );
}

/// `→ Overall exposure level for session-recorder.service: 1.2 OK 🙂` -> 1.2
fn exposure(output: &str) -> f64 {
    let line = output
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure line in:\n{output}"));
    let after = line.rsplit_once(": ").expect("colon").1;
    after
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure in {line:?}"))
}

#[test]
fn hardening_exposure_is_at_most_2_0() {
    for service in SERVICES {
        let out = run(Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            // --threshold is the exposure x 10: a non-zero exit above 2.0.
            .arg(format!("--threshold={}", (EXPOSURE_MAX * 10.0) as u32))
            .arg(systemd_dir().join(service)));
        let stdout = text(&out.stdout);
        let level = exposure(&stdout);
        println!("{service}: exposure {level}");
        assert!(level <= EXPOSURE_MAX, "{service}: {level}\n{stdout}");
        assert!(out.status.success(), "{service}: {}", text(&out.stderr));
    }
}

#[test]
fn sysusers_and_tmpfiles_apply_to_an_empty_root() {
    let root = tempfile::tempdir().expect("tempdir");
    let r = root.path();
    std::fs::create_dir_all(r.join("etc")).expect("etc");
    let out = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", r.display()))
        .arg(systemd_dir().join("session-recorder.sysusers")));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let passwd = std::fs::read_to_string(r.join("etc/passwd")).expect("passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("session-recorder:"))
        .unwrap_or_else(|| panic!("no user in {passwd}"));
    let fields: Vec<&str> = line.split(':').collect();
    assert_eq!(fields[5], "/var/lib/session-recorder", "{line}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{line}");
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "a system user: {line}");

    let out = run(Command::new("systemd-tmpfiles")
        .arg("--create")
        .arg(format!("--root={}", r.display()))
        .arg(systemd_dir().join("session-recorder.tmpfiles")));
    assert!(out.status.success(), "{}", text(&out.stderr));
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let spool = std::fs::metadata(r.join("var/spool/guacamole-recordings")).expect("spool");
    assert!(spool.is_dir());
    assert_eq!(spool.permissions().mode() & 0o7777, 0o2770);
    if is_root() {
        assert_eq!(spool.uid(), uid);
        assert_eq!(
            spool.gid(),
            uid,
            "sysusers gives the user a group of the same id"
        );
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Every `*.toml` under `dir`, recursively.
fn tomls(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            tomls(&path, found);
        } else if path.extension().is_some_and(|e| e == "toml") {
            found.push(path);
        }
    }
}

#[test]
fn every_shipped_config_parses_and_validates() {
    let mut found = Vec::new();
    tomls(&repo().join("image"), &mut found);
    tomls(&repo().join("systemd"), &mut found);
    assert!(
        found.iter().any(|p| p.ends_with("image/config.toml")),
        "{found:?}"
    );
    for path in &found {
        let raw = RawConfig::from_file(path).unwrap_or_else(|e| panic!("{e}"));
        let config = raw
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // The upload stage accepts the location and its key template too.
        config
            .storage
            .upload_settings()
            .validate()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

#[test]
fn unit_and_image_config_agree_on_paths() {
    let unit =
        std::fs::read_to_string(systemd_dir().join("session-recorder.service")).expect("read unit");
    let config = RawConfig::from_file(&repo().join("image/config.toml"))
        .and_then(|r| r.validate())
        .expect("image config");
    let line = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
            .to_string()
    };
    assert_eq!(
        line("ExecStart="),
        format!("/usr/bin/session-recorder serve --config {DEFAULT_CONFIG_PATH}")
    );
    assert_eq!(
        Path::new("/var/lib").join(line("StateDirectory=")),
        config.data_dir
    );
    assert_eq!(PathBuf::from(line("ReadWritePaths=")), config.spool_dir);
    // The settings page writes the config file; `systemctl reload` applies it; a bad file is
    // not restarted in a loop.
    let config_dir = Path::new(DEFAULT_CONFIG_PATH).parent().unwrap();
    assert!(
        unit.contains(&format!("ReadWritePaths={}\n", config_dir.display())),
        "{unit}"
    );
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID\n"));
    assert!(unit.contains("RestartPreventExitStatus=78\n"));
    // Runtime files (the HTTP socket) in /run, emptied by systemd after any stop.
    assert_eq!(line("RuntimeDirectory="), "session-recorder");
    assert!(unit.contains("Type=notify\n"));
    assert!(unit.contains("WatchdogSec="));
    let tmpfiles = std::fs::read_to_string(systemd_dir().join("session-recorder.tmpfiles"))
        .expect("read tmpfiles");
    assert!(
        tmpfiles.contains(&format!("d {} ", config.spool_dir.display())),
        "{tmpfiles}"
    );
    assert!(
        tmpfiles.contains(&format!(
            "d {} 2770 root session-recorder",
            config_dir.display()
        )),
        "{tmpfiles}"
    );
}
