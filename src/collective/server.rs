//! A thread of our own for an engine whose handles are not `Send` (MPI's world, NCCL's communicator): it sets the
//! engine up, owns it and answers requests from any thread, one at a time in the order they come. Dropping the
//! [`Server`] closes its inbox and waits for the thread, so the engine is torn down where it was set up.

use super::CollectiveError;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread::JoinHandle;

/// The sending end of a serving thread.
pub struct Server<R> {
    name: &'static str,
    requests: Option<Sender<R>>,
    thread: Option<JoinHandle<()>>,
}

impl<R: Send + 'static> Server<R> {
    /// Starts the thread `name`: it runs `setup` and, once that succeeded, `serve` with the engine and the inbox
    /// of requests (until every request is answered and the server dropped). Returns what `setup` tells the caller.
    pub fn start<E, T: Send + 'static>(
        name: &'static str,
        setup: impl FnOnce() -> Result<(E, T), CollectiveError> + Send + 'static,
        serve: impl FnOnce(E, Receiver<R>) + Send + 'static,
    ) -> Result<(Server<R>, T), CollectiveError> {
        let (requests, inbox) = channel();
        let (started, joined) = channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || match setup() {
                Ok((engine, told)) => {
                    let _ = started.send(Ok(told));
                    serve(engine, inbox);
                }
                Err(e) => {
                    let _ = started.send(Err(e));
                }
            })
            .map_err(|e| CollectiveError::new(format!("cannot start the {name} thread: {e}")))?;
        // On failure the server is dropped, which joins the thread.
        let server = Server { name, requests: Some(requests), thread: Some(thread) };
        match joined.recv() {
            Ok(Ok(told)) => Ok((server, told)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(server.gone()),
        }
    }

    /// Sends the request `make` builds around a reply channel, and waits for the answer.
    pub fn ask<T>(&self, make: impl FnOnce(Sender<Result<T, CollectiveError>>) -> R) -> Result<T, CollectiveError> {
        let (reply, answer) = channel();
        self.send(make(reply))?;
        answer.recv().map_err(|_| self.gone())?
    }

    /// Sends a request that expects no answer.
    pub fn send(&self, request: R) -> Result<(), CollectiveError> {
        self.requests.as_ref().ok_or_else(|| self.gone())?.send(request).map_err(|_| self.gone())
    }

    fn gone(&self) -> CollectiveError {
        CollectiveError::new(format!("the {} thread has stopped", self.name))
    }
}

impl<R> Drop for Server<R> {
    fn drop(&mut self) {
        // Closing the inbox ends the serving loop; joining waits for the engine's teardown.
        self.requests.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
