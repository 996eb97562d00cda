//! The handle of a spawned command: ordered events, stdin.

use tokio::sync::{mpsc, oneshot};

use crate::{RunnerCommandId, RunnerCommandResult, RunnerError, RunnerEvent, RunnerStream};

/// A stdin operation sent to the provider's pump task, answered on the oneshot.
pub(crate) enum StdinOp {
    Write(Vec<u8>, oneshot::Sender<Result<(), RunnerError>>),
    Close(oneshot::Sender<Result<(), RunnerError>>),
}

/// A command started by [`crate::RunnerSession::spawn`].
///
/// Events come in seq order, each once; the stream ends after [`RunnerEvent::Closed`] or
/// [`RunnerEvent::Failed`]. Dropping the handle does not stop the command (use
/// [`crate::RunnerSession::cancel_command`]); its remaining output is discarded.
#[derive(Debug)]
pub struct RunnerProcess {
    id: RunnerCommandId,
    events: mpsc::Receiver<RunnerEvent>,
    stdin: mpsc::Sender<StdinOp>,
}

impl std::fmt::Debug for StdinOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StdinOp::Write(b, _) => write!(f, "Write({} bytes)", b.len()),
            StdinOp::Close(_) => f.write_str("Close"),
        }
    }
}

/// A clonable handle on a command's stdin (see [`RunnerProcess::stdin`]).
#[derive(Debug, Clone)]
pub struct RunnerStdin {
    id: RunnerCommandId,
    tx: mpsc::Sender<StdinOp>,
}

impl RunnerStdin {
    /// Writes all of `bytes` to the command's stdin.
    ///
    /// # Errors
    /// As [`RunnerProcess::write_stdin`].
    pub async fn write(&self, bytes: &[u8]) -> Result<(), RunnerError> {
        stdin_op(&self.tx, &self.id, |r| StdinOp::Write(bytes.to_vec(), r)).await
    }

    /// Closes stdin (the command sees EOF).
    ///
    /// # Errors
    /// As [`RunnerProcess::write_stdin`].
    pub async fn close(&self) -> Result<(), RunnerError> {
        stdin_op(&self.tx, &self.id, StdinOp::Close).await
    }
}

/// Sends one stdin operation to the provider's pump and waits for its answer.
async fn stdin_op(
    tx: &mpsc::Sender<StdinOp>,
    id: &str,
    op: impl FnOnce(oneshot::Sender<Result<(), RunnerError>>) -> StdinOp,
) -> Result<(), RunnerError> {
    let (reply, rx) = oneshot::channel();
    tx.send(op(reply))
        .await
        .map_err(|_| RunnerError::StdinClosed(id.to_owned()))?;
    rx.await
        .map_err(|_| RunnerError::StdinClosed(id.to_owned()))?
}

/// Output of a command gathered by [`RunnerProcess::collect`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectedOutput {
    /// Stdout (and pty) bytes.
    pub stdout: Vec<u8>,
    /// Stderr bytes.
    pub stderr: Vec<u8>,
    /// Exit code, if an exit was seen.
    pub exit_code: Option<i32>,
    /// The message of a [`RunnerEvent::Failed`] end.
    pub failure: Option<String>,
    /// Set by `run_command` when its timeout expired.
    pub timed_out: bool,
}

impl CollectedOutput {
    /// As a [`RunnerCommandResult`] (output decoded as lossy UTF-8; a failure message is
    /// appended to stderr).
    pub fn into_result(self, command_id: RunnerCommandId) -> RunnerCommandResult {
        let mut stderr = String::from_utf8_lossy(&self.stderr).into_owned();
        if let Some(f) = &self.failure {
            stderr.push_str(&format!("\n[baton-runner: {f}]"));
        }
        RunnerCommandResult {
            command_id,
            exit_code: self.exit_code,
            stdout: String::from_utf8_lossy(&self.stdout).into_owned(),
            stderr,
            timed_out: self.timed_out,
        }
    }
}

impl RunnerProcess {
    pub(crate) fn new(
        id: RunnerCommandId,
        events: mpsc::Receiver<RunnerEvent>,
        stdin: mpsc::Sender<StdinOp>,
    ) -> Self {
        Self { id, events, stdin }
    }

    /// The command id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next event; `None` after the last one.
    pub async fn next_event(&mut self) -> Option<RunnerEvent> {
        self.events.recv().await
    }

    /// Writes all of `bytes` to the command's stdin.
    ///
    /// # Errors
    /// [`RunnerError::StdinClosed`] after [`RunnerProcess::close_stdin`] or once the command
    /// ended; provider errors.
    pub async fn write_stdin(&self, bytes: &[u8]) -> Result<(), RunnerError> {
        stdin_op(&self.stdin, &self.id, |r| StdinOp::Write(bytes.to_vec(), r)).await
    }

    /// Closes stdin (the command sees EOF).
    ///
    /// # Errors
    /// As [`RunnerProcess::write_stdin`].
    pub async fn close_stdin(&self) -> Result<(), RunnerError> {
        stdin_op(&self.stdin, &self.id, StdinOp::Close).await
    }

    /// A handle on the command's stdin that can be kept (and cloned) apart from the event
    /// stream, e.g. by a task that forwards input while another consumes events.
    pub fn stdin(&self) -> RunnerStdin {
        RunnerStdin {
            id: self.id.clone(),
            tx: self.stdin.clone(),
        }
    }

    /// Consumes the remaining events and gathers output and exit code.
    pub async fn collect(mut self) -> CollectedOutput {
        let mut out = CollectedOutput::default();
        self.collect_into(&mut out).await;
        out
    }

    /// Like [`RunnerProcess::collect`], appending to `out`. Cancel-safe: every event received
    /// before the future is dropped is already in `out`, so a later call continues seamlessly.
    pub async fn collect_into(&mut self, out: &mut CollectedOutput) {
        while let Some(event) = self.events.recv().await {
            match event {
                RunnerEvent::Output { stream, chunk, .. } => match stream {
                    RunnerStream::Stderr => out.stderr.extend_from_slice(&chunk),
                    RunnerStream::Stdout | RunnerStream::Pty => {
                        out.stdout.extend_from_slice(&chunk)
                    }
                },
                RunnerEvent::Exited { exit_code, .. } => out.exit_code = Some(exit_code),
                RunnerEvent::Closed { .. } => break,
                RunnerEvent::Failed { message } => {
                    out.failure = Some(message);
                    break;
                }
            }
        }
    }
}
