//! The joint between a blocking stage thread and an async consumer (the store).
//!
//! The writer batches into chunks and sends them over a bounded channel; the stream on the
//! other side ends normally only when the writer said `finish()`. If the writer is dropped
//! without finishing (its thread failed), the stream yields an error, so the store aborts the
//! object instead of committing a truncated one.

use std::io::{self, Write};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::store::ByteStream;

const CHUNK: usize = 256 * 1024;

enum Msg {
    Data(Bytes),
    End,
}

pub struct PipeWriter {
    tx: mpsc::Sender<Msg>,
    buf: BytesMut,
}

/// A bounded pipe of `depth` chunks of 256 KiB.
pub fn pipe(depth: usize) -> (PipeWriter, ByteStream) {
    let (tx, rx) = mpsc::channel(depth);
    let writer = PipeWriter {
        tx,
        buf: BytesMut::with_capacity(CHUNK),
    };
    let stream = futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Msg::Data(b)) => Some((Ok(b), Some(rx))),
            Some(Msg::End) => None,
            None => Some((
                Err(io::Error::other(
                    "the pipeline stopped before the end of the data",
                )),
                None,
            )),
        }
    });
    // Fused: a consumer may poll again after the end (S3's part reader does) and must get
    // `None`, not a panic.
    (writer, Box::pin(stream.fuse()))
}

impl PipeWriter {
    fn send(&mut self, msg: Msg) -> io::Result<()> {
        self.tx
            .blocking_send(msg)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the store stopped reading"))
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = self.buf.split().freeze();
            self.send(Msg::Data(chunk))?;
            self.buf.reserve(CHUNK);
        }
        Ok(())
    }

    /// Sends what is buffered and marks the stream complete.
    ///
    /// # Errors
    /// The reading side is gone.
    pub fn finish(mut self) -> io::Result<()> {
        self.send_buffered()?;
        self.send(Msg::End)
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_writer_dropped_without_finish_turns_into_an_error() {
        let (mut w, mut s) = pipe(2);
        let t = std::thread::spawn(move || {
            w.write_all(&vec![7u8; CHUNK + 10]).unwrap();
            drop(w);
        });
        let first = s.next().await.unwrap().unwrap();
        assert_eq!(first.len(), CHUNK);
        assert!(s.next().await.unwrap().is_err());
        assert!(s.next().await.is_none());
        assert!(s.next().await.is_none(), "polling after the end is safe");
        t.join().unwrap();
    }

    #[tokio::test]
    async fn finish_delivers_everything_then_ends() {
        let (mut w, s) = pipe(2);
        let t = std::thread::spawn(move || {
            w.write_all(&vec![1u8; 3 * CHUNK + 5]).unwrap();
            w.finish().unwrap();
        });
        let all: Vec<_> = s.collect().await;
        let total: usize = all.iter().map(|c| c.as_ref().unwrap().len()).sum();
        assert_eq!(total, 3 * CHUNK + 5);
        t.join().unwrap();
    }
}
