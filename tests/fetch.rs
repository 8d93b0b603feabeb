//! Offline tests of the CIFAR-10 download: a tiny HTTP/1.1 server on 127.0.0.1 serves a small fake archive.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use resnet::fetch::{fetch_cifar10, FetchOptions, ARCHIVE_NAME, CIFAR10_BATCH_BYTES, EXTRACTED_DIR};

// ----- helpers --------------------------------------------------------------------------------------------------

/// A scratch folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("fetch-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random bytes (so gzip cannot shrink them much).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One tar member: `prefix` goes to the ustar prefix field; `typeflag` b'0' is a file, b'5' a folder.
struct Member<'a> {
    prefix: &'a str,
    name: &'a str,
    typeflag: u8,
    data: &'a [u8],
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> Member<'a> {
    Member {
        prefix: "",
        name,
        typeflag: b'0',
        data,
    }
}

/// A ustar archive of the members, with the two end-of-archive blocks.
fn tar(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        let mut h = [0u8; 512];
        h[..m.name.len()].copy_from_slice(m.name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0001750\0");
        h[116..124].copy_from_slice(b"0001750\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", m.data.len()).as_bytes());
        h[136..148].copy_from_slice(b"14770437000\0");
        h[156] = m.typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + m.prefix.len()].copy_from_slice(m.prefix.as_bytes());
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(m.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// A small fake CIFAR-10 archive and its extracted files (relative to `cifar-10-batches-bin/`).
struct Fake {
    archive: Vec<u8>,
    files: Vec<(String, Vec<u8>)>,
}

fn fake_archive() -> Fake {
    let files: Vec<(String, Vec<u8>)> = vec![
        ("data_batch_1.bin".into(), noise(70_001, 1)),
        ("data_batch_2.bin".into(), noise(65_536, 2)),
        ("test_batch.bin".into(), noise(1_000, 3)),
        ("batches.meta.txt".into(), b"airplane\nautomobile\n".to_vec()),
    ];
    let names: Vec<String> = files.iter().map(|(n, _)| format!("{EXTRACTED_DIR}/{n}")).collect();
    let mut members = vec![Member {
        prefix: "",
        name: "cifar-10-batches-bin/",
        typeflag: b'5',
        data: b"",
    }];
    // The first file's folder goes in the ustar prefix field.
    members.push(Member {
        prefix: EXTRACTED_DIR,
        name: &files[0].0,
        typeflag: b'0',
        data: &files[0].1,
    });
    for (name, (_, data)) in names.iter().zip(&files).skip(1) {
        members.push(file(name, data));
    }
    Fake {
        archive: gzip(&tar(&members)),
        files,
    }
}

fn options(dir: &Path, url: &str, md5: &str, fake: &Fake) -> FetchOptions {
    FetchOptions {
        url: url.to_string(),
        md5: md5.to_string(),
        dir: dir.to_path_buf(),
        timeout: Duration::from_secs(5),
        expected_files: fake.files.iter().map(|(n, d)| (n.clone(), d.len() as u64)).collect(),
    }
}

fn assert_extracted(dir: &Path, fake: &Fake) {
    let folder = dir.join(EXTRACTED_DIR);
    for (name, data) in &fake.files {
        assert_eq!(&fs::read(folder.join(name)).unwrap(), data, "{name}");
    }
    assert_eq!(fs::read(dir.join(ARCHIVE_NAME)).unwrap(), fake.archive);
    assert!(!dir.join(format!("{ARCHIVE_NAME}.part")).exists());
    let leftovers: Vec<_> = fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".extracting"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A port on 127.0.0.1 that nothing listens on.
fn refused_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/{ARCHIVE_NAME}")
}

// ----- a tiny bounded HTTP server -------------------------------------------------------------------------------

#[derive(Clone, Copy)]
enum Mode {
    /// Honours `Range: bytes=N-` with 206 and `Content-Range`.
    Ranges,
    /// Ignores `Range` and always answers 200 with the whole body.
    NoRanges,
    /// Answers every request with this status and no body.
    Status(u16),
    /// The first connection announces the whole body but closes after this many bytes; then like `Ranges`.
    CutFirstAfter(usize),
    /// The first connection answers `302 Found` to another path on this server; then like `Ranges`.
    RedirectFirst,
}

/// Serves one body to at most `MAX_CONNECTIONS` connections, for at most `LIFETIME`, then stops.
struct Server {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const MAX_CONNECTIONS: usize = 4;
const LIFETIME: Duration = Duration::from_secs(30);

impl Server {
    fn start(body: Vec<u8>, mode: Mode) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/{ARCHIVE_NAME}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen, stopped) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + LIFETIME;
            let mut served = 0;
            while served < MAX_CONNECTIONS && !stopped.load(Ordering::SeqCst) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let mode = match mode {
                            Mode::CutFirstAfter(_) | Mode::RedirectFirst if served > 0 => Mode::Ranges,
                            m => m,
                        };
                        serve(stream, &body, mode, &seen);
                        served += 1;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        Server {
            url,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// The request heads seen so far, lower-cased.
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The `Range` header of each request, if any.
    fn ranges(&self) -> Vec<Option<String>> {
        self.requests()
            .iter()
            .map(|head| {
                head.lines()
                    .find_map(|l| l.strip_prefix("range:").map(|v| v.trim().to_string()))
            })
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut stream: TcpStream, body: &[u8], mode: Mode, seen: &Mutex<Vec<String>>) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    seen.lock().unwrap().push(head.clone());
    let range_start = head
        .lines()
        .find_map(|l| l.strip_prefix("range:"))
        .and_then(|v| v.trim().strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<usize>().ok());
    let len = body.len();
    let (status, extra, data): (&str, String, &[u8]) = match (mode, range_start) {
        (Mode::Status(code), _) => (
            if code == 404 {
                "404 Not Found"
            } else {
                "500 Internal Server Error"
            },
            String::new(),
            b"",
        ),
        (Mode::Ranges, Some(start)) if start < len => (
            "206 Partial Content",
            format!("Content-Range: bytes {start}-{}/{len}\r\n", len - 1),
            &body[start..],
        ),
        (Mode::Ranges, Some(_)) => (
            "416 Range Not Satisfiable",
            format!("Content-Range: bytes */{len}\r\n"),
            b"",
        ),
        (Mode::RedirectFirst, _) => ("302 Found", "Location: /moved/archive.tar.gz\r\n".to_string(), b""),
        (Mode::CutFirstAfter(n), _) => {
            let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(reply.as_bytes());
            let _ = stream.write_all(&body[..n]);
            let _ = stream.flush();
            return;
        }
        _ => ("200 OK", String::new(), body),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        data.len()
    );
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.write_all(data);
    let _ = stream.flush();
}

// ----- tests ----------------------------------------------------------------------------------------------------

#[test]
fn fresh_download_and_extraction() {
    let tmp = TempDir::new("fresh");
    let dir = tmp.0.join("data");
    let fake = fake_archive();
    let server = Server::start(fake.archive.clone(), Mode::Ranges);
    let opts = options(&dir, &server.url, &md5_hex(&fake.archive), &fake);
    let mut calls = Vec::new();
    let got = fetch_cifar10(&opts, &mut |done, total| calls.push((done, total))).unwrap();
    assert_eq!(got, dir.join(EXTRACTED_DIR));
    assert_extracted(&dir, &fake);
    assert_eq!(server.ranges(), vec![None]);
    assert!(server.requests()[0].starts_with(&format!("get /{ARCHIVE_NAME} http/1.1")));
    let len = fake.archive.len() as u64;
    assert_eq!(calls.first(), Some(&(0, Some(len))));
    assert_eq!(calls.last(), Some(&(len, Some(len))));
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");
}

#[test]
fn resumes_a_partial_download() {
    let tmp = TempDir::new("resume");
    let fake = fake_archive();
    let half = fake.archive.len() / 2;
    fs::write(tmp.0.join(format!("{ARCHIVE_NAME}.part")), &fake.archive[..half]).unwrap();
    let server = Server::start(fake.archive.clone(), Mode::Ranges);
    let opts = options(&tmp.0, &server.url, &md5_hex(&fake.archive), &fake);
    let mut calls = Vec::new();
    fetch_cifar10(&opts, &mut |done, total| calls.push((done, total))).unwrap();
    assert_eq!(server.ranges(), vec![Some(format!("bytes={half}-"))]);
    assert_eq!(calls.first(), Some(&(half as u64, Some(fake.archive.len() as u64))));
    assert_extracted(&tmp.0, &fake);
}

#[test]
fn redirect_is_followed_and_keeps_the_range() {
    let tmp = TempDir::new("redirect");
    let fake = fake_archive();
    let third = fake.archive.len() / 3;
    fs::write(tmp.0.join(format!("{ARCHIVE_NAME}.part")), &fake.archive[..third]).unwrap();
    let server = Server::start(fake.archive.clone(), Mode::RedirectFirst);
    let opts = options(&tmp.0, &server.url, &md5_hex(&fake.archive), &fake);
    fetch_cifar10(&opts, &mut |_, _| {}).unwrap();
    let range = Some(format!("bytes={third}-"));
    assert_eq!(server.ranges(), vec![range.clone(), range]);
    assert!(server.requests()[1].starts_with("get /moved/archive.tar.gz http/1.1"));
    assert_extracted(&tmp.0, &fake);
}

#[test]
fn server_without_range_support_restarts_the_download() {
    let tmp = TempDir::new("norange");
    let fake = fake_archive();
    // Garbage in the .part file: appending to it would fail the checksum.
    fs::write(tmp.0.join(format!("{ARCHIVE_NAME}.part")), vec![0xAAu8; 1234]).unwrap();
    let server = Server::start(fake.archive.clone(), Mode::NoRanges);
    let opts = options(&tmp.0, &server.url, &md5_hex(&fake.archive), &fake);
    fetch_cifar10(&opts, &mut |_, _| {}).unwrap();
    assert_eq!(server.ranges(), vec![Some("bytes=1234-".to_string())]);
    assert_extracted(&tmp.0, &fake);
}

#[test]
fn complete_part_file_answered_416_is_used() {
    let tmp = TempDir::new("416");
    let fake = fake_archive();
    fs::write(tmp.0.join(format!("{ARCHIVE_NAME}.part")), &fake.archive).unwrap();
    let server = Server::start(fake.archive.clone(), Mode::Ranges);
    let opts = options(&tmp.0, &server.url, &md5_hex(&fake.archive), &fake);
    fetch_cifar10(&opts, &mut |_, _| {}).unwrap();
    assert_eq!(server.ranges(), vec![Some(format!("bytes={}-", fake.archive.len()))]);
    assert_extracted(&tmp.0, &fake);
}

#[test]
fn interrupted_download_keeps_its_part_and_resumes() {
    let tmp = TempDir::new("cut");
    let fake = fake_archive();
    let cut = fake.archive.len() / 3;
    let server = Server::start(fake.archive.clone(), Mode::CutFirstAfter(cut));
    let opts = options(&tmp.0, &server.url, &md5_hex(&fake.archive), &fake);
    let err = format!("{:#}", fetch_cifar10(&opts, &mut |_, _| {}).unwrap_err());
    assert!(
        err.contains("interrupted") && err.contains("run again to resume"),
        "{err}"
    );
    let part = tmp.0.join(format!("{ARCHIVE_NAME}.part"));
    assert_eq!(fs::read(&part).unwrap(), &fake.archive[..cut]);
    assert!(!tmp.0.join(EXTRACTED_DIR).exists());

    fetch_cifar10(&opts, &mut |_, _| {}).unwrap();
    assert_eq!(server.ranges(), vec![None, Some(format!("bytes={cut}-"))]);
    assert_extracted(&tmp.0, &fake);
}

#[test]
fn wrong_md5_fails_and_cleans_up() {
    let tmp = TempDir::new("md5");
    let fake = fake_archive();
    let server = Server::start(fake.archive.clone(), Mode::Ranges);
    let wrong = "0123456789abcdef0123456789abcdef";
    let opts = options(&tmp.0, &server.url, &wrong.to_ascii_uppercase(), &fake);
    let err = format!("{:#}", fetch_cifar10(&opts, &mut |_, _| {}).unwrap_err());
    assert!(err.contains(wrong), "{err}");
    assert!(err.contains(&md5_hex(&fake.archive)), "{err}");
    assert!(!tmp.0.join(format!("{ARCHIVE_NAME}.part")).exists());
    assert!(!tmp.0.join(ARCHIVE_NAME).exists());
    assert!(!tmp.0.join(EXTRACTED_DIR).exists());
}

#[test]
fn connection_refused_fails_at_once_with_the_offline_hint() {
    let tmp = TempDir::new("refused");
    let fake = fake_archive();
    let url = refused_url();
    let opts = options(&tmp.0, &url, &md5_hex(&fake.archive), &fake);
    let start = Instant::now();
    let err = format!("{:#}", fetch_cifar10(&opts, &mut |_, _| {}).unwrap_err());
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    assert!(err.starts_with(&format!("cannot download {url}: ")), "{err}");
    assert!(err.contains("Without network access"), "{err}");
    assert!(err.contains(&tmp.0.display().to_string()), "{err}");
    assert!(!tmp.0.join(format!("{ARCHIVE_NAME}.part")).exists());
}

#[test]
fn http_error_names_the_status() {
    let tmp = TempDir::new("404");
    let fake = fake_archive();
    let server = Server::start(Vec::new(), Mode::Status(404));
    let opts = options(&tmp.0, &server.url, &md5_hex(&fake.archive), &fake);
    let err = format!("{:#}", fetch_cifar10(&opts, &mut |_, _| {}).unwrap_err());
    assert!(err.contains("HTTP 404 Not Found"), "{err}");
    assert!(!tmp.0.join(format!("{ARCHIVE_NAME}.part")).exists());
}

#[test]
fn already_extracted_data_needs_no_request() {
    let tmp = TempDir::new("done");
    let fake = fake_archive();
    let folder = tmp.0.join(EXTRACTED_DIR);
    fs::create_dir_all(&folder).unwrap();
    for (name, data) in &fake.files {
        fs::write(folder.join(name), data).unwrap();
    }
    let server = Server::start(fake.archive.clone(), Mode::Ranges);
    let opts = options(&tmp.0, &server.url, &md5_hex(&fake.archive), &fake);
    assert_eq!(
        fetch_cifar10(&opts, &mut |_, _| panic!("no download expected")).unwrap(),
        folder
    );

    // The same with the real CIFAR-10 file list, using sparse files of the full size.
    let real = TempDir::new("done-real");
    let folder = real.0.join(EXTRACTED_DIR);
    fs::create_dir_all(&folder).unwrap();
    let mut opts = FetchOptions::cifar10(&real.0);
    opts.url = server.url.clone();
    assert_eq!(opts.expected_files.len(), 6);
    for (name, size) in &opts.expected_files {
        assert_eq!(*size, CIFAR10_BATCH_BYTES);
        fs::File::create(folder.join(name)).unwrap().set_len(*size).unwrap();
    }
    assert_eq!(fetch_cifar10(&opts, &mut |_, _| {}).unwrap(), folder);
    assert!(server.requests().is_empty());

    // One batch short of its size: not complete, so the network is tried.
    fs::File::options()
        .write(true)
        .open(folder.join("test_batch.bin"))
        .unwrap()
        .set_len(100)
        .unwrap();
    opts.url = refused_url();
    let err = format!("{:#}", fetch_cifar10(&opts, &mut |_, _| {}).unwrap_err());
    assert!(err.contains("cannot download"), "{err}");
}

#[test]
fn existing_archive_is_used_without_network() {
    let tmp = TempDir::new("offline-archive");
    let fake = fake_archive();
    fs::write(tmp.0.join(ARCHIVE_NAME), &fake.archive).unwrap();
    let opts = options(&tmp.0, &refused_url(), &md5_hex(&fake.archive), &fake);
    fetch_cifar10(&opts, &mut |_, _| panic!("no download expected")).unwrap();
    assert_extracted(&tmp.0, &fake);
}

#[test]
fn stale_archive_is_downloaded_anew() {
    let tmp = TempDir::new("stale");
    let fake = fake_archive();
    fs::write(tmp.0.join(ARCHIVE_NAME), b"not the archive").unwrap();
    let server = Server::start(fake.archive.clone(), Mode::Ranges);
    let opts = options(&tmp.0, &server.url, &md5_hex(&fake.archive), &fake);
    fetch_cifar10(&opts, &mut |_, _| {}).unwrap();
    assert_eq!(server.requests().len(), 1);
    assert_extracted(&tmp.0, &fake);
}

#[test]
fn stale_archive_offline_says_why_it_was_not_used() {
    let tmp = TempDir::new("stale-offline");
    let fake = fake_archive();
    fs::write(tmp.0.join(ARCHIVE_NAME), b"not the archive").unwrap();
    let opts = options(&tmp.0, &refused_url(), &md5_hex(&fake.archive), &fake);
    let err = fetch_cifar10(&opts, &mut |_, _| {}).unwrap_err().to_string();
    assert!(err.contains("Without network access"), "{err}");
    assert!(
        err.contains(&md5_hex(b"not the archive")) && err.contains(&md5_hex(&fake.archive)),
        "{err}"
    );
}

#[test]
fn member_escaping_the_folder_is_rejected() {
    let tmp = TempDir::new("evil");
    let dir = tmp.0.join("data");
    fs::create_dir_all(&dir).unwrap();
    let archive = gzip(&tar(&[
        file("cifar-10-batches-bin/ok.bin", b"fine"),
        file("../evil", b"gotcha"),
    ]));
    fs::write(dir.join(ARCHIVE_NAME), &archive).unwrap();
    let fake = Fake {
        archive: archive.clone(),
        files: vec![("ok.bin".into(), b"fine".to_vec())],
    };
    let opts = options(&dir, &refused_url(), &md5_hex(&archive), &fake);
    let err = format!("{:#}", fetch_cifar10(&opts, &mut |_, _| {}).unwrap_err());
    assert!(err.contains("\"../evil\"") && err.contains("outside"), "{err}");
    assert!(!tmp.0.join("evil").exists());
    assert!(!tmp.0.join("evil.extracting").exists());
}

#[test]
fn truncated_archive_leaves_no_complete_looking_file() {
    let tmp = TempDir::new("truncated");
    let big = noise(200_000, 9);
    let full = gzip(&tar(&[file("cifar-10-batches-bin/data_batch_1.bin", &big)]));
    let archive = full[..full.len() / 2].to_vec();
    fs::write(tmp.0.join(ARCHIVE_NAME), &archive).unwrap();
    let fake = Fake {
        archive: archive.clone(),
        files: vec![("data_batch_1.bin".into(), big.clone())],
    };
    let opts = options(&tmp.0, &refused_url(), &md5_hex(&archive), &fake);
    let err = format!("{:#}", fetch_cifar10(&opts, &mut |_, _| {}).unwrap_err());
    assert!(err.contains("cannot extract"), "{err}");
    let folder = tmp.0.join(EXTRACTED_DIR);
    assert!(!folder.join("data_batch_1.bin").exists());
    assert!(!folder.join("data_batch_1.bin.extracting").exists());
}

#[test]
fn garbage_archive_is_an_error_not_a_panic() {
    let tmp = TempDir::new("garbage");
    let archive = gzip(&noise(5_000, 4));
    fs::write(tmp.0.join(ARCHIVE_NAME), &archive).unwrap();
    let fake = Fake {
        archive: archive.clone(),
        files: vec![("x.bin".into(), vec![0])],
    };
    let opts = options(&tmp.0, &refused_url(), &md5_hex(&archive), &fake);
    let err = format!("{:#}", fetch_cifar10(&opts, &mut |_, _| {}).unwrap_err());
    assert!(err.contains("checksum"), "{err}");
}

#[test]
fn invalid_md5_option_is_rejected() {
    let tmp = TempDir::new("badmd5");
    let fake = fake_archive();
    let opts = options(&tmp.0, &refused_url(), "abc", &fake);
    let err = format!("{:#}", fetch_cifar10(&opts, &mut |_, _| {}).unwrap_err());
    assert!(err.contains("invalid md5"), "{err}");
}
