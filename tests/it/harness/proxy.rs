//! A TCP proxy on 127.0.0.1 that forwards to etcd and fails on command: after a number of
//! bytes from the server it cuts every connection (etcd "dies" mid-stream) or stops forwarding
//! (etcd hangs). Deterministic: it counts bytes, it does not race a timer.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Close every connection once this many server bytes were forwarded.
    CutAfter(u64),
    /// Forward this many server bytes, then nothing more (connections stay open).
    StallAfter(u64),
}

pub struct Proxy {
    pub url: String,
    forwarded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    port: u16,
}

impl Proxy {
    /// Forwards to `target` (`host:port`) with `fault`.
    pub fn start(target: &str, fault: Fault, scheme: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let forwarded = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let target = target.to_string();
        {
            let (forwarded, stop, conns) = (forwarded.clone(), stop.clone(), conns.clone());
            thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = TcpStream::connect(&target) else {
                        continue;
                    };
                    conns.lock().unwrap().push(client.try_clone().unwrap());
                    conns.lock().unwrap().push(server.try_clone().unwrap());
                    pump(
                        client.try_clone().unwrap(),
                        server.try_clone().unwrap(),
                        None,
                        stop.clone(),
                    );
                    pump(
                        server,
                        client,
                        Some((fault, forwarded.clone(), conns.clone())),
                        stop.clone(),
                    );
                }
            });
        }
        Proxy {
            url: format!("{scheme}://127.0.0.1:{port}"),
            forwarded,
            stop,
            conns,
            port,
        }
    }

    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::SeqCst)
    }
}

type Limit = (Fault, Arc<AtomicU64>, Arc<Mutex<Vec<TcpStream>>>);

fn pump(mut from: TcpStream, mut to: TcpStream, limit: Option<Limit>, stop: Arc<AtomicBool>) {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut send = n;
            if let Some((fault, forwarded, conns)) = &limit {
                let before = forwarded.fetch_add(n as u64, Ordering::SeqCst);
                let cap = match fault {
                    Fault::CutAfter(c) | Fault::StallAfter(c) => *c,
                };
                if before + n as u64 > cap {
                    send = cap.saturating_sub(before) as usize;
                    let _ = to.write_all(&buf[..send]);
                    match fault {
                        Fault::CutAfter(_) => {
                            for c in conns.lock().unwrap().iter() {
                                let _ = c.shutdown(Shutdown::Both);
                            }
                        }
                        Fault::StallAfter(_) => {
                            while !stop.load(Ordering::SeqCst) {
                                thread::sleep(Duration::from_millis(50));
                            }
                        }
                    }
                    break;
                }
            }
            if to.write_all(&buf[..send]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().iter() {
            let _ = c.shutdown(Shutdown::Both);
        }
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}
