//! Client side of the control socket, used by the CLI subcommands.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::{anyhow, Context as _};

use crate::model::protocol::{Reply, Request};

pub struct Client {
    reader: BufReader<UnixStream>,
    /// The request could not be written: the daemon refused the connection first (its reply
    /// says why) or went away.
    write_error: Option<std::io::Error>,
}

impl Client {
    pub fn send(socket: &Path, req: &Request) -> anyhow::Result<Client> {
        let mut s = UnixStream::connect(socket).with_context(|| {
            format!(
                "cannot reach the watcher daemon at {} (is `watcher run` running, and are you root or in the approver group?)",
                socket.display()
            )
        })?;
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        let write_error = match s.write_all(&line) {
            Ok(()) => None,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Some(e)
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Client {
            reader: BufReader::new(s),
            write_error,
        })
    }

    /// The next line of the reply, None at end of stream.
    pub fn next_line(&mut self) -> anyhow::Result<Option<String>> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(line))
    }

    /// A single-reply request; daemon-side errors become errors here.
    pub fn reply(mut self) -> anyhow::Result<Reply> {
        let line = match (self.next_line(), self.write_error.take()) {
            (Ok(Some(l)), _) => l,
            (_, Some(e)) => return Err(anyhow!("the daemon closed the connection: {e}")),
            (Ok(None), None) => {
                return Err(anyhow!("the daemon closed the connection without a reply"))
            }
            (Err(e), None) => return Err(e),
        };
        match serde_json::from_str(&line).context("malformed reply from the daemon")? {
            Reply::Error { error } => Err(anyhow!(error)),
            r => Ok(r),
        }
    }
}
