//! An HTTP/1.1 proxy on 127.0.0.1 in front of the S3 server that injects faults by request
//! number: answer 500/503 instead of forwarding, cut the connection in the middle of the
//! request body, or stall (forward nothing, answer nothing). Every request gets its own
//! upstream connection (`Connection: close` is forced), so requests are counted exactly.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpFault {
    Status(u16),
    /// Forward the head and this many body bytes, then close both sides.
    CutBody(usize),
    Stall,
}

pub struct FaultProxy {
    pub endpoint: String,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicUsize>,
    heads: Heads,
    port: u16,
}

/// Every request head seen, in arrival order.
type Heads = Arc<Mutex<Vec<String>>>;

type Plan = Arc<Mutex<Box<dyn FnMut(usize, &str) -> Option<HttpFault> + Send>>>;

impl FaultProxy {
    /// `plan(n, request_line)` decides the fault of the n-th request (1-based).
    pub fn start(
        upstream: &str,
        plan: impl FnMut(usize, &str) -> Option<HttpFault> + Send + 'static,
    ) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = upstream.trim_start_matches("http://").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let heads: Heads = Arc::default();
        let plan: Plan = Arc::new(Mutex::new(Box::new(plan)));
        {
            let (stop, count, heads) = (stop.clone(), count.clone(), heads.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (upstream, stop, count, plan, heads) = (
                        upstream.clone(),
                        stop.clone(),
                        count.clone(),
                        plan.clone(),
                        heads.clone(),
                    );
                    thread::spawn(move || serve(conn, &upstream, &stop, &count, &plan, &heads));
                }
            });
        }
        FaultProxy {
            endpoint: format!("http://127.0.0.1:{port}"),
            stop,
            count,
            heads,
            port,
        }
    }

    /// The request heads seen so far (request line and headers).
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub fn requests(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}

/// Reads up to the end of the request head; returns head and any body bytes read with it.
fn read_head(conn: &mut TcpStream) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((buf, rest));
        }
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn force_close(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut lines: Vec<&str> = text
        .trim_end_matches("\r\n\r\n")
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    format!("{}\r\n\r\n", lines.join("\r\n")).into_bytes()
}

fn serve(
    mut conn: TcpStream,
    upstream: &str,
    stop: &AtomicBool,
    count: &AtomicUsize,
    plan: &Plan,
    heads: &Heads,
) {
    // One request per connection: the client reconnects for the next one.
    let Some((head, early_body)) = read_head(&mut conn) else {
        return;
    };
    heads
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&head).into_owned());
    let request_line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
    let fault = (plan.lock().unwrap())(n, &request_line);
    match fault {
        Some(HttpFault::Status(code)) => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>injected</Message></Error>",
                if code == 503 { "SlowDown" } else { "InternalError" }
            );
            let _ = write!(
                conn,
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.shutdown(Shutdown::Both);
        }
        Some(HttpFault::Stall) => {
            while !stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(50));
                // The client gives up (attempt timeout) and closes; stop then.
                let mut probe = [0u8; 1];
                conn.set_read_timeout(Some(Duration::from_millis(10))).ok();
                if matches!(conn.read(&mut probe), Ok(0)) {
                    break;
                }
            }
        }
        other => {
            let Ok(mut up) = TcpStream::connect(upstream) else {
                return;
            };
            let _ = up.write_all(&force_close(&head));
            let limit = match other {
                Some(HttpFault::CutBody(n)) => Some(n),
                _ => None,
            };
            let mut sent = 0usize;
            let mut forward = |data: &[u8], up: &mut TcpStream| -> bool {
                let allowed = match limit {
                    Some(l) => data.len().min(l.saturating_sub(sent)),
                    None => data.len(),
                };
                let ok = up.write_all(&data[..allowed]).is_ok();
                sent += allowed;
                ok && allowed == data.len()
            };
            if !forward(&early_body, &mut up) {
                let _ = up.shutdown(Shutdown::Both);
                let _ = conn.shutdown(Shutdown::Both);
                return;
            }
            let mut back = up.try_clone().unwrap();
            let mut client = conn.try_clone().unwrap();
            let responder = thread::spawn(move || {
                let _ = std::io::copy(&mut back, &mut client);
                let _ = client.shutdown(Shutdown::Both);
            });
            let mut buf = [0u8; 16 * 1024];
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => {
                        if !forward(&buf[..k], &mut up) {
                            let _ = up.shutdown(Shutdown::Both);
                            let _ = conn.shutdown(Shutdown::Both);
                            break;
                        }
                    }
                }
            }
            let _ = up.shutdown(Shutdown::Write);
            let _ = responder.join();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// An S3 server with one bucket, behind a proxy that answers 503 to the requests `faulty`
/// picks (by request line) while `failing` is on.
pub struct FlakyS3 {
    pub server: super::s3::S3Server,
    pub proxy: FaultProxy,
    pub failing: Arc<AtomicBool>,
}

impl FlakyS3 {
    pub fn start(
        bucket: &str,
        failing: bool,
        faulty: impl Fn(&str) -> bool + Send + 'static,
    ) -> FlakyS3 {
        let server = super::s3::S3Server::start();
        crate::harness::data::rt().block_on(server.create_bucket(bucket));
        let failing = Arc::new(AtomicBool::new(failing));
        let on = failing.clone();
        let proxy = FaultProxy::start(&server.endpoint, move |_, line| {
            (on.load(Ordering::SeqCst) && faulty(line)).then_some(HttpFault::Status(503))
        });
        FlakyS3 {
            server,
            proxy,
            failing,
        }
    }

    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }
}
