//! Group commit for the pipeline's writes: what concurrent callers submit while a write is
//! under way is written together, in one database transaction, by whichever caller takes the
//! writer's turn next.
//!
//! A caller queues its item and waits for the turn. The holder takes the queued items (its own
//! and any that arrived meanwhile, up to a weight), writes them, and hands every caller its
//! result; a caller finds its result ready when it gets the turn, or writes the next group
//! itself. Nobody gets a result before its group is committed, and a failed group fails every
//! caller in it. The writing caller runs the write in place, holding the turn, and should it be
//! dropped meanwhile (its future cancelled), a task of its own finishes it: the others of its
//! group get their answer all the same.

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::oneshot;

use crate::util::RunToEnd;

/// Items waiting to be written together, and the writer's turn.
#[derive(Debug)]
pub(super) struct Group<T, R> {
    queue: Mutex<Vec<Waiting<T, R>>>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl<T, R> Default for Group<T, R> {
    fn default() -> Self {
        Self { queue: Mutex::default(), turn: Arc::default() }
    }
}

#[derive(Debug)]
struct Waiting<T, R> {
    item: T,
    reply: oneshot::Sender<Result<R, String>>,
}

impl<T: Send + 'static, R: Send + 'static> Group<T, R> {
    /// Submits `item` and returns its result once its group is written: `write` gets the
    /// group's items in the order they were submitted (at most `max_weight` of them by
    /// `weight`, and at least one) and returns one result for each, in the same order.
    ///
    /// # Errors
    /// The group's error, given to every caller in it.
    pub(super) async fn submit<W, F>(
        &self,
        item: T,
        max_weight: usize,
        weight: fn(&T) -> usize,
        write: W,
    ) -> Result<R, String>
    where
        W: Fn(Vec<T>) -> F,
        F: Future<Output = Result<Vec<R>, String>> + Send + 'static,
    {
        let (reply, mut outcome) = oneshot::channel();
        self.lock().push(Waiting { item, reply });
        loop {
            let turn = self.turn.clone().lock_owned().await;
            // The writer before us may have written our item (it answered before it let go).
            if let Some(result) = answered(&mut outcome) {
                return result;
            }
            let group: Vec<Waiting<T, R>> = {
                let mut queue = self.lock();
                let mut total = 0;
                let n = queue
                    .iter()
                    .take_while(|w| {
                        total += weight(&w.item);
                        total <= max_weight
                    })
                    .count()
                    .max(1)
                    .min(queue.len());
                queue.drain(..n).collect()
            };
            let (items, replies): (Vec<T>, Vec<_>) =
                group.into_iter().map(|w| (w.item, w.reply)).unzip();
            let work = write(items);
            RunToEnd::new(async move {
                match work.await {
                    Ok(results) if results.len() == replies.len() => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Ok(results) => {
                        let error =
                            format!("{} results for {} items", results.len(), replies.len());
                        for reply in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                    Err(error) => {
                        for reply in replies {
                            let _ = reply.send(Err(error.clone()));
                        }
                    }
                }
                drop(turn);
            })
            .await;
            if let Some(result) = answered(&mut outcome) {
                return result;
            }
            // Our item was not in that group (the queue held more than one group's worth).
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting<T, R>>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The answer, if there is one: a write that panicked dropped its callers' senders.
fn answered<R>(outcome: &mut oneshot::Receiver<Result<R, String>>) -> Option<Result<R, String>> {
    match outcome.try_recv() {
        Ok(result) => Some(result),
        Err(oneshot::error::TryRecvError::Closed) => {
            Some(Err("the group's write was interrupted".to_owned()))
        }
        Err(oneshot::error::TryRecvError::Empty) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Concurrent callers are written in groups (fewer writes than callers), each group's
    /// items in the order they were submitted, and each caller gets its own result.
    #[tokio::test]
    async fn concurrent_callers_share_writes_and_each_gets_its_own_result() {
        let group: Arc<Group<usize, usize>> = Arc::default();
        let written: Arc<Mutex<Vec<Vec<usize>>>> = Arc::default();
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (group, written) = (group.clone(), written.clone());
                tokio::spawn(async move {
                    let write = move |items: Vec<usize>| {
                        let written = written.clone();
                        async move {
                            tokio::task::yield_now().await;
                            written.lock().unwrap().push(items.clone());
                            Ok(items.iter().map(|i| i * 10).collect())
                        }
                    };
                    group.submit(i, 16, |_| 1, write).await
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.unwrap(), Ok(i * 10));
        }
        let written = written.lock().unwrap();
        assert!(written.len() < 50, "{} writes for 50 callers", written.len());
        assert!(written.iter().all(|g| !g.is_empty() && g.len() <= 16), "{written:?}");
        let all: Vec<usize> = written.iter().flatten().copied().collect();
        assert_eq!(all, (0..50).collect::<Vec<_>>(), "each once, in submission order");
    }

    /// A failed write fails every caller of its group, and only those; an item heavier than
    /// the limit is written alone.
    #[tokio::test]
    async fn a_failed_write_fails_its_whole_group_and_no_other() {
        let group: Arc<Group<usize, usize>> = Arc::default();
        let writes = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let (group, writes) = (group.clone(), writes.clone());
                tokio::spawn(async move {
                    let write = move |items: Vec<usize>| {
                        writes.fetch_add(1, Ordering::SeqCst);
                        async move {
                            tokio::task::yield_now().await;
                            if items.contains(&7) {
                                return Err("seven".to_owned());
                            }
                            Ok(items)
                        }
                    };
                    // Item 20 weighs more than a group may: it goes alone.
                    let weight: fn(&usize) -> usize = |i| if *i == 20 { 100 } else { 1 };
                    (i, group.submit(i, 10, weight, write).await)
                })
            })
            .collect();
        let mut failed = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                (i, Ok(result)) => assert_eq!(result, i),
                (i, Err(e)) => {
                    assert_eq!(e, "seven");
                    failed.push(i);
                }
            }
        }
        assert!(failed.contains(&7), "{failed:?}");
        assert!(failed.len() > 1 && failed.len() <= 10, "7's group mates fail with it: {failed:?}");
        assert!(!failed.contains(&20));
        // Later callers are not affected.
        let ok = group.submit(99, 10, |_| 1, |items: Vec<usize>| async move { Ok(items) }).await;
        assert_eq!(ok, Ok(99));
        assert!(writes.load(Ordering::SeqCst) >= 4);
    }
}
