//! Who wrote the bytes that came in on a unix socket: the kernel's credentials of each message
//! (`SO_PASSCRED`), not only those of the process that connected. That one may have passed the
//! descriptor on (`SCM_RIGHTS`) or left it to a child and exited: a check of the connector
//! alone would let a watched process speak through a descriptor an outside process opened.
use std::os::fd::{AsFd, AsRawFd};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixCredentials,
};

/// The process that sent a message, as the kernel recorded it at the send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sender {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Asks the kernel for each message's sender. The kernel records a sender only while the
/// receiving socket asks: set it on the listener, whose accepted sockets inherit it, before any
/// client can connect.
pub fn pass_credentials(sock: &impl AsFd) -> std::io::Result<()> {
    setsockopt(sock, sockopt::PassCred, &true).map_err(std::io::Error::from)
}

/// One `recvmsg` into `buf`: the bytes read and who sent them (None: no credentials came, which
/// the caller treats as an unknown sender). One call never returns the bytes of two senders:
/// the kernel stops at a change of credentials. Descriptors sent along are closed unread.
pub fn recv(sock: &impl AsRawFd, buf: &mut [u8]) -> std::io::Result<(usize, Option<Sender>)> {
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(UnixCredentials);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let sender = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|c| match c {
            ControlMessageOwned::ScmCredentials(u) => Some(Sender {
                pid: u.pid().max(0) as u32,
                uid: u.uid(),
                gid: u.gid(),
            }),
            _ => None,
        })
    });
    Ok((msg.bytes, sender))
}

/// Reads one line (up to and with its `\n`, or EOF) of at most `max` bytes from a tokio unix
/// stream, with every distinct sender of its bytes. A line longer than `max` stops the read
/// there (the caller's parser refuses it).
pub async fn read_line(
    stream: &tokio::net::UnixStream,
    max: usize,
) -> std::io::Result<(Vec<u8>, Vec<Option<Sender>>)> {
    pass_credentials(stream)?;
    let (mut line, mut senders) = (Vec::new(), Vec::new());
    let mut chunk = [0u8; 4096];
    loop {
        stream.readable().await?;
        let got = stream.try_io(tokio::io::Interest::READABLE, || recv(stream, &mut chunk));
        let (n, sender) = match got {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok((line, senders));
        }
        if !senders.contains(&sender) {
            senders.push(sender);
        }
        let part = &chunk[..n];
        match part.iter().position(|b| *b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&part[..=i]);
                return Ok((line, senders));
            }
            None => line.extend_from_slice(part),
        }
        if line.len() > max {
            return Ok((line, senders));
        }
    }
}

/// Every sender of the bytes read so far on a `SenderStream`, each once (None: bytes that came
/// with no credentials).
pub type Senders = std::sync::Arc<std::sync::Mutex<Vec<Option<Sender>>>>;

/// A unix stream that notes who sent the bytes it reads, for a server (hyper) that reads
/// through it: the request is then judged by its writers, whoever connected.
pub struct SenderStream {
    inner: tokio::net::UnixStream,
    senders: Senders,
}

impl SenderStream {
    pub fn new(inner: tokio::net::UnixStream) -> std::io::Result<(SenderStream, Senders)> {
        pass_credentials(&inner)?;
        let senders = Senders::default();
        let s = SenderStream {
            inner,
            senders: senders.clone(),
        };
        Ok((s, senders))
    }
}

impl tokio::io::AsyncRead for SenderStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if let Err(e) = std::task::ready!(this.inner.poll_read_ready(cx)) {
                return Poll::Ready(Err(e));
            }
            let unfilled = buf.initialize_unfilled();
            let got = this.inner.try_io(tokio::io::Interest::READABLE, || {
                recv(&this.inner, unfilled)
            });
            match got {
                Ok((n, sender)) => {
                    if n > 0 {
                        let mut s = this.senders.lock().unwrap_or_else(|e| e.into_inner());
                        if !s.contains(&sender) {
                            s.push(sender);
                        }
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl tokio::io::AsyncWrite for SenderStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sender of each message is the process that wrote it, whoever connected: here a
    /// child writes on a descriptor its parent opened, and the line is the child's.
    #[tokio::test]
    async fn the_sender_is_who_wrote_not_who_connected() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        let b = tokio::net::UnixStream::from_std(b).unwrap();
        pass_credentials(&b).unwrap();
        // SAFETY: fork in a test; the child only writes and exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let _ = std::io::Write::write_all(&mut &a, b"from the child\n");
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(0) };
        }
        let (line, senders) = read_line(&b, 1024).await.unwrap();
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
        assert_eq!(line, b"from the child\n");
        assert_eq!(senders.len(), 1, "{senders:?}");
        let s = senders[0].unwrap();
        assert_eq!(s.pid, child as u32);
        assert_ne!(s.pid, std::process::id());
    }
}
