//! Media that streams, against a real Synapse: a 200 MiB file goes up and comes back down
//! without the bridge's memory growing with it, and a file over the homeserver's limit is
//! refused before anything is sent.
//!
//! The transfer runs in a child process (this test binary, re-executed with `MXB_MEDIA_CHILD`
//! set), so its peak memory (`VmHWM`) is its own and not that of the tests running beside it.

use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::{
    common::registration_yaml,
    synapse::{Synapse, enabled},
};

const MIB: u64 = 1024 * 1024;
const SIZE: u64 = 200 * MIB;

#[derive(Serialize, Deserialize)]
struct ChildSpec {
    hs_url: String,
    registration: String,
}

#[derive(Serialize, Deserialize, Debug)]
struct ChildReport {
    hwm_before_kib: u64,
    hwm_after_kib: u64,
    downloaded: u64,
    checksum_ok: bool,
    too_large: String,
}

/// `VmHWM` of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The byte at `offset` of the test file: a pattern that tells misplaced chunks apart.
fn byte_at(offset: u64) -> u8 {
    u8::try_from((offset * 31 + offset / 4096) % 251).unwrap()
}

/// Not a test of its own: the body of the child process (see the module docs).
#[tokio::test]
async fn media_child_entry_point() {
    let Ok(spec) = std::env::var("MXB_MEDIA_CHILD") else { return };
    let spec: ChildSpec = serde_json::from_str(&spec).unwrap();
    let registration = mxbridge::Registration::from_yaml(&spec.registration).unwrap();
    let server = ruma::server_name!("localhost");
    let client =
        mxbridge::client::Client::new(spec.hs_url.parse().unwrap(), server, registration).unwrap();
    // Warm up what every request needs (connection pool, TLS-less HTTP/1.1, the media config).
    client.upload_limit().await.unwrap();
    let hwm_before_kib = peak_rss_kib();

    // Up: 200 chunks of 1 MiB, each made when the upload asks for it.
    let chunks = futures_util::stream::iter(0..SIZE / MIB).map(|n| {
        let chunk: Vec<u8> = (n * MIB..(n + 1) * MIB).map(byte_at).collect();
        Ok::<_, std::io::Error>(bytes::Bytes::from(chunk))
    });
    let body = mxbridge::client::UploadBody::from_stream(chunks, SIZE);
    let mxc = client
        .upload_stream(None, body, "application/octet-stream", Some("big.bin"))
        .await
        .unwrap();

    // Down, chunk by chunk, checking every byte.
    let mut download = client.download_stream(&mxc).await.unwrap();
    let (mut downloaded, mut checksum_ok) = (0u64, true);
    while let Some(chunk) = download.chunk().await.unwrap() {
        for (i, b) in chunk.iter().enumerate() {
            checksum_ok &= *b == byte_at(downloaded + i as u64);
        }
        downloaded += chunk.len() as u64;
    }
    let hwm_after_kib = peak_rss_kib();

    // Over the limit: refused before a byte is sent.
    let never = futures_util::stream::pending::<Result<bytes::Bytes, std::io::Error>>();
    let body = mxbridge::client::UploadBody::from_stream(never, 300 * MIB);
    let too_large = client
        .upload_stream(None, body, "application/octet-stream", None)
        .await
        .unwrap_err()
        .to_string();
    let report = ChildReport { hwm_before_kib, hwm_after_kib, downloaded, checksum_ok, too_large };
    println!("MEDIA-REPORT {}", serde_json::to_string(&report).unwrap());
}

use futures_util::StreamExt as _;

#[tokio::test]
async fn a_200_mib_file_streams_up_and_down_with_flat_memory() {
    if std::env::var("MXB_MEDIA_CHILD").is_ok() || !enabled() {
        return;
    }
    let registration = registration_yaml("null");
    let synapse = Synapse::start(&registration);
    let spec = ChildSpec { hs_url: synapse.url.clone(), registration };
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["media::media_child_entry_point", "--exact", "--nocapture", "--test-threads=1"])
        .env("MXB_MEDIA_CHILD", serde_json::to_string(&spec).unwrap())
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("MEDIA-REPORT ").map(|(_, r)| r))
        .unwrap_or_else(|| {
            panic!("the child reported nothing: {stdout}");
        });
    let report: ChildReport = serde_json::from_str(line).unwrap();
    assert_eq!(report.downloaded, SIZE, "{report:?}");
    assert!(report.checksum_ok, "the file came back changed");
    let grown_mib = (report.hwm_after_kib - report.hwm_before_kib) / 1024;
    assert!(grown_mib < 64, "peak memory grew by {grown_mib} MiB moving 200 MiB: {report:?}");
    assert!(report.too_large.contains("over the homeserver's upload limit"), "{report:?}");
    eprintln!("200 MiB up and down: peak memory grew by {grown_mib} MiB");
}
