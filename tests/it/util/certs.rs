//! A private CA and a `localhost` / 127.0.0.1 server certificate signed by it, made with the
//! openssl CLI, for the TLS tests of the HTTP front and of the S3 client. A certificate marked as
//! a CA used directly as the server certificate is refused by rustls-based clients, hence the
//! CA + leaf pair.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files [`make_ca_and_leaf`] wrote.
pub struct TestCerts {
    /// The CA certificate (PEM): what the client trusts.
    pub ca: PathBuf,
    /// The server certificate (PEM), signed by the CA.
    pub leaf: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub leaf_key: PathBuf,
}

/// Writes `ca.pem`, `ca.key`, `leaf.pem` and `leaf.key` (P-256) into `dir`.
pub fn make_ca_and_leaf(dir: &Path) -> TestCerts {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl CLI is needed for the TLS tests");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=session-recorder test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    ]);
    TestCerts {
        ca: dir.join("ca.pem"),
        leaf: dir.join("leaf.pem"),
        leaf_key: dir.join("leaf.key"),
    }
}
